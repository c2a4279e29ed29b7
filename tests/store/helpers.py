"""Input builders shared by the store tests (no assertions here)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from common.types import (
    EDGE_NPU,
    AssignmentAck,
    AssignmentFailure,
    BootstrapToken,
    DataType,
    Device,
    DeviceEvent,
    HardwareProfile,
    InferenceRecord,
    ModelVariant,
    Outcome,
    ReportedState,
    TelemetryRecord,
    TensorSpec,
)
from controller.store.base import Store

T0 = int(datetime(2026, 11, 22, 10, 0, tzinfo=UTC).timestamp() * 1000)
#: 2026-11-23T10:00:00Z, one day after T0.
EXPIRES = int(datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp() * 1000)

HW = HardwareProfile(
    hardware_class=EDGE_NPU,
    cpu_cores=4,
    memory_bytes=4 << 30,
    execution_providers=("NnapiExecutionProvider", "CPUExecutionProvider"),
    os="linux-aarch64",
    onnxruntime_version="1.20.1",
    agent_version="0.1.0",
    labels={"site": "lab", "rack": "3"},
)


def add_token(
    store: Store,
    token_id: str = "tok-1",
    token_hash: str = "hash-1",
    *,
    uses: int = 1,
    expires_at_ms: int = EXPIRES,
    now_ms: int = T0,
) -> BootstrapToken:
    return store.create_token(
        token_id, token_hash, expires_at_ms=expires_at_ms, uses=uses, description="", now_ms=now_ms
    )


def enroll_result(
    store: Store,
    device_id: str,
    *,
    token_hash: str = "hash-1",
    hardware: HardwareProfile = HW,
    credential_hash: str = "cred",
    now_ms: int = T0 + 1,
) -> tuple[Device, bool]:
    return store.enroll_device(
        device_id, hardware, credential_hash=credential_hash, token_hash=token_hash, now_ms=now_ms
    )


def enroll(
    store: Store,
    device_id: str,
    *,
    token_hash: str = "hash-1",
    hardware: HardwareProfile = HW,
    credential_hash: str = "cred",
    now_ms: int = T0 + 1,
) -> Device:
    """Enroll a new device (the caller expects it to be created)."""
    device, created = enroll_result(
        store,
        device_id,
        token_hash=token_hash,
        hardware=hardware,
        credential_hash=credential_hash,
        now_ms=now_ms,
    )
    assert created, f"{device_id} was already enrolled"
    return device


def enrolled(store: Store, *device_ids: str) -> list[Device]:
    """Enroll devices with a fresh token of their own."""
    token_hash = f"hash-for-{'-'.join(device_ids)}"
    add_token(store, f"tok-{token_hash}", token_hash, uses=len(device_ids))
    return [enroll(store, d, token_hash=token_hash) for d in device_ids]


def assign(
    store: Store, device_id: str, sha: str, *, model: str = "mnist", variant: str = "fp32", size: int = 100
) -> tuple[Device, bool]:
    return store.set_assignment(
        device_id, model_name=model, variant=variant, artifact_sha256=sha, artifact_size_bytes=size
    )


def hello(
    store: Store, device_id: str, *, acked_version: int = 0, records_dropped: int = 0, now_ms: int = T0 + 1
) -> Device:
    return store.device_connected(
        device_id,
        hardware=HW,
        reported=ReportedState(acked_version=acked_version),
        records_dropped=records_dropped,
        now_ms=now_ms,
    )


def ack(version: int, failure: AssignmentFailure | None = None, message: str = "") -> AssignmentAck:
    """An ack whose reported state is recognisably that of ``version``."""
    reported = ReportedState(acked_version=version, active_sha256=f"sha-{version}", active_model_name="mnist")
    return AssignmentAck(version=version, reported=reported, failure=failure, message=message)


def inference(sequence: int, *, latency_ms: float = 1.25, outcome: Outcome = Outcome.OK) -> TelemetryRecord:
    body = InferenceRecord(model_sha256="aa", latency_ms=latency_ms, outcome=outcome)
    return TelemetryRecord(sequence=sequence, timestamp_ms=T0 + sequence, body=body)


def event(sequence: int, *, kind: str = "assignment_applied", message: str = "ok") -> TelemetryRecord:
    body = DeviceEvent(kind=kind, message=message, assignment_version=sequence)
    return TelemetryRecord(sequence=sequence, timestamp_ms=T0 + sequence, body=body)


def variant(name: str = "fp32", sha: str = "aa", *, size: int = 1_000) -> ModelVariant:
    return ModelVariant(
        variant=name,
        sha256=sha,
        size_bytes=size,
        inputs=(TensorSpec("input", DataType.FLOAT32, (-1, 64)),),
        outputs=(TensorSpec("label", DataType.INT64, (-1,)), TensorSpec("probs", DataType.FLOAT32, (-1, 10))),
    )


def run_concurrently(n: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` for i in range(n) on n threads released together; each result or raised error."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def target(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as e:  # collected for the caller to assert on
            results[i] = e

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
