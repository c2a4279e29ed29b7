"""A small client for an agent's local Infer/GetStatus service (used by ``fleet-agent infer``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
import numpy as np

from common import limits, serde
from common.tensors import from_tensor, to_tensor
from common.types import AgentStatus, InferRequest, InferResponse


class AgentClient:
    def __init__(self, address: str, *, timeout_s: float = 30.0) -> None:
        self._timeout = timeout_s
        self._channel = grpc.insecure_channel(
            address,
            options=limits.GRPC_MESSAGE_OPTIONS,
        )
        self._stub = serde.AgentServiceStub(self._channel)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] = ()
    ) -> tuple[dict[str, np.ndarray], str, float]:
        """Run the device's model: (outputs by name, sha256 of the model that answered, server latency ms)."""
        response = self.infer_response(inputs, output_names)
        return {t.name: from_tensor(t) for t in response.outputs}, response.model_sha256, response.latency_ms

    def infer_response(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] = (),
        *,
        timeout: float | None = None,
    ) -> InferResponse:
        """The whole answer: outputs as tensors, which model answered, the path and every hop's timing."""
        request = InferRequest(
            inputs=tuple(to_tensor(name, value) for name, value in inputs.items()),
            output_names=tuple(output_names),
        )
        try:
            pb = self._stub.Infer(serde.infer_request_to_pb(request), timeout=timeout or self._timeout)
        except grpc.RpcError as exc:
            raise serde.error_from_rpc_error(exc) from None
        return serde.infer_response_from_pb(pb)

    def status(self) -> AgentStatus:
        try:
            return serde.agent_status_from_pb(
                self._stub.GetStatus(serde.get_status_request_to_pb(), timeout=self._timeout)
            )
        except grpc.RpcError as exc:
            raise serde.error_from_rpc_error(exc) from None
