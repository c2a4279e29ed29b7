"""AdminClient: fleetctl's connection to a running controller (never to its database file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from common import limits, serde
from common.errors import TransientError
from common.types import (
    AssignmentChange,
    AssignResult,
    CreatedToken,
    Device,
    DeviceLatency,
    ImportModelHeader,
    ImportProgress,
    Model,
    PolicyApply,
    PolicyFile,
    ProfileRequestRecord,
    SegmentEvaluation,
    SegmentSpec,
)

T = TypeVar("T")
IMPORT_CHUNK_BYTES = 1 * limits.MIB
#: Evaluating a mix builds its segments and runs the eval data: seconds for digits, minutes for MiniLM.
EVALUATE_TIMEOUT_S = 900.0
#: Planning a fleet of 100,000 devices takes seconds; give it room.
POLICY_TIMEOUT_S = 120.0


class AdminClient:
    def __init__(self, address: str, *, timeout_s: float = 15.0) -> None:
        self.address = address
        self._timeout = timeout_s
        self._channel = grpc.insecure_channel(
            address,
            options=limits.GRPC_MESSAGE_OPTIONS,
        )
        self._stub = serde.AdminServiceStub(self._channel)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        decode: Callable[[Any], T],
        timeout: float | None = None,
    ) -> T:
        try:
            return decode(method(request, timeout=timeout or self._timeout))
        except grpc.RpcError as exc:
            raise serde.error_from_rpc_error(exc) from None

    def create_token(self, *, ttl_s: int, uses: int, description: str = "") -> CreatedToken:
        return self._call(
            self._stub.CreateToken,
            serde.create_token_request_to_pb(ttl_s, uses, description),
            serde.create_token_response_from_pb,
        )

    def list_devices(self) -> list[Device]:
        return list(
            self._call(
                self._stub.ListDevices,
                serde.list_devices_request_to_pb(),
                serde.list_devices_response_from_pb,
            )
        )

    def get_device(self, device_id: str) -> Device:
        return self._call(
            self._stub.GetDevice, serde.get_device_request_to_pb(device_id), serde.device_from_pb
        )

    def device_latency(self, device_id: str, *, window: int = 0) -> DeviceLatency:
        return self._call(
            self._stub.GetDeviceLatency,
            serde.get_device_latency_request_to_pb(device_id, window),
            serde.device_latency_from_pb,
        )

    def list_models(self) -> list[Model]:
        return list(
            self._call(
                self._stub.ListModels, serde.list_models_request_to_pb(), serde.list_models_response_from_pb
            )
        )

    def assign(self, device_id: str, model_name: str, variant: str = "fp32") -> AssignResult:
        return self._call(
            self._stub.Assign,
            serde.assign_request_to_pb(device_id, model_name, variant),
            serde.assign_response_from_pb,
        )

    def get_model(self, name: str) -> Model:
        return self._call(self._stub.GetModel, serde.get_model_request_to_pb(name), serde.model_from_pb)

    def evaluate_segments(self, model_name: str, segments: Sequence[SegmentSpec]) -> SegmentEvaluation:
        return self._call(
            self._stub.EvaluateSegments,
            serde.evaluate_segments_request_to_pb(model_name, segments),
            serde.evaluate_segments_response_from_pb,
            timeout=max(self._timeout, EVALUATE_TIMEOUT_S),
        )

    def request_profile(
        self, model_name: str, *, device_ids: Sequence[str] = (), hardware_class: str = "", runs: int = 0
    ) -> list[ProfileRequestRecord]:
        """Ask devices (by id, or every device of a hardware class) to profile the model's blocks;
        returns one request per device asked."""
        return list(
            self._call(
                self._stub.RequestProfile,
                serde.request_profile_request_to_pb(model_name, device_ids, hardware_class, runs),
                serde.request_profile_response_from_pb,
            )
        )

    def get_artifact_manifest(self, sha256: str) -> dict[str, Any]:
        return self._call(
            self._stub.GetArtifactManifest,
            serde.get_artifact_manifest_request_to_pb(sha256),
            serde.artifact_manifest_doc_from_pb,
        )

    def import_model(
        self,
        path: Path,
        *,
        name: str,
        variant: str = "fp32",
        progress: Callable[[int], None] | None = None,
        eval_data: Path | None = None,
        precisions: Sequence[str] = (),
        on_event: Callable[[ImportProgress], None] | None = None,
    ) -> Model:
        """Upload a model (and the eval data for building ``precisions``); returns the registered model.

        ``progress`` is called with the size of every chunk sent (model and eval data), ``on_event``
        with every build step the controller streams back.
        """
        size = path.stat().st_size
        eval_size = eval_data.stat().st_size if eval_data is not None else 0

        def requests() -> Iterator[Any]:
            yield serde.import_model_request_to_pb(
                ImportModelHeader(
                    name=name,
                    variant=variant,
                    size_bytes=size,
                    precisions=tuple(precisions),
                    eval_data_size_bytes=eval_size,
                )
            )
            with path.open("rb") as f:
                while chunk := f.read(IMPORT_CHUNK_BYTES):
                    yield serde.import_model_request_to_pb(chunk)
                    if progress is not None:
                        progress(len(chunk))
            if eval_data is not None:
                with eval_data.open("rb") as f:
                    while chunk := f.read(IMPORT_CHUNK_BYTES):
                        yield serde.import_model_request_to_pb(serde.EvalDataChunk(chunk))
                        if progress is not None:
                            progress(len(chunk))

        # Building variants measures every candidate: allow far longer than a plain upload.
        timeout = max(self._timeout, 3600.0 if precisions else 600.0)
        try:
            for pb in self._stub.ImportModel(requests(), timeout=timeout):
                event = serde.import_model_event_from_pb(pb)
                if isinstance(event, Model):
                    return event
                if on_event is not None:
                    on_event(event)
        except grpc.RpcError as exc:
            raise serde.error_from_rpc_error(exc) from None
        raise TransientError("import: the controller ended the stream without the model")

    # --- policies -------------------------------------------------------------------------------

    def plan_policies(
        self, files: Sequence[PolicyFile], *, explain: Sequence[str] = (), devices: bool = False
    ) -> dict[str, Any]:
        return self._call(
            self._stub.PlanPolicies,
            serde.plan_policies_request_to_pb(files, explain=explain, devices=devices),
            serde.plan_policies_response_from_pb,
            timeout=POLICY_TIMEOUT_S,
        )

    def diff_policies(
        self, files: Sequence[PolicyFile]
    ) -> tuple[dict[str, Any], tuple[AssignmentChange, ...], dict[str, Any]]:
        return self._call(
            self._stub.DiffPolicies,
            serde.plan_policies_request_to_pb(files),
            serde.diff_policies_response_from_pb,
            timeout=POLICY_TIMEOUT_S,
        )

    def apply_policies(
        self,
        files: Sequence[PolicyFile],
        *,
        applied_by: str,
        git_commit: str = "",
        git_dirty: bool = False,
        source: str = "",
        message: str = "",
    ) -> tuple[PolicyApply, bool, tuple[AssignmentChange, ...]]:
        return self._call(
            self._stub.ApplyPolicies,
            serde.apply_policies_request_to_pb(
                files,
                applied_by=applied_by,
                git_commit=git_commit,
                git_dirty=git_dirty,
                source=source,
                message=message,
            ),
            serde.apply_policies_response_from_pb,
            timeout=POLICY_TIMEOUT_S,
        )

    def list_policy_applies(self, *, limit: int = 0) -> tuple[PolicyApply, ...]:
        return self._call(
            self._stub.ListPolicyApplies,
            serde.list_policy_applies_request_to_pb(limit),
            serde.list_policy_applies_response_from_pb,
        )
