"""Partitioned inference end to end: a controller and three agent processes (phone, edge node, cloud
GPU worker) on loopback; the controller's plan cuts the digits model in two places and a request
flows phone -> edge -> cloud and back.

The plan is the planner's own. To make "two cuts" its best answer on any machine, the test reads the
block profile the import measured on this host and writes HardwareClass policies whose scales put
the phone, the edge node and the cloud worker where that plan wins by a clear margin (a slow phone
with a thin link, an edge node that should run little, a cloud worker reachable only through it),
each with no per-call overhead (digits' blocks are mostly onnxruntime's call overhead on the host, so
with it every segment would cost about as much as the whole model and no cut could pay).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import onnxruntime as ort
import pytest

from agent.client import AgentClient
from common import serde
from common.tensors import from_tensor, to_tensor
from common.types import RunSegmentRequest, Tensor
from controller.client import AdminClient
from controller.toolchain.digits import DigitsArtifacts
from simulator.processes import Proc, fleetctl, free_port, start_agent, start_controller, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CONVERGE_S = 60.0
SLO_MS = 55.0
#: phone -> edge: thin (so running the first blocks on the phone pays); phone -> cloud: unusable.
PHONE_LINK = "edge=0.05/0.5"
#: The edge listens on a fixed port, so that restarted it is where its clients' plans say.
EDGE_EXTRA = ["--label", "pool=edge", "--listen", f"127.0.0.1:{free_port()}"]


@dataclass
class Fleet:
    root: Path
    address: str
    procs: dict[str, Proc] = field(default_factory=dict)
    agents: dict[str, str] = field(default_factory=dict)  # device id -> its Infer/Segment address

    def ctl(self, *args: str, check: bool = True) -> str:
        return fleetctl(*args, controller=self.address, check=check).stdout


def _policies(root: Path, profile: dict[str, object]) -> Path:
    """HardwareClass scales from the measured host profile that make device+edge+cloud, with the
    phone running the blocks up to the first cut that shrinks the tensor, the plan that wins."""
    # In the describe document a block's start_cut is None at the model inputs, its end_cut None at
    # the outputs.
    cuts = {c["index"]: c["bytes_per_sample"] for c in profile["cut_points"]}  # type: ignore[index, union-attr]
    blocks = sorted(
        (b for b in profile["block_profiles"] if b["precision"] == "fp32" and b["batch_size"] == 1),  # type: ignore[union-attr, index]
        key=lambda b: b["start_cut"] or 0,
    )
    inputs = 64 * 4
    head_end = next(b["end_cut"] for b in blocks if b["end_cut"] and (cuts[b["end_cut"]] or inputs) < inputs)
    head_ms = sum(b["latency_ms"] for b in blocks if b["end_cut"] and b["end_cut"] <= head_end)
    edge_ms = next(b["latency_ms"] for b in blocks if b["start_cut"] == head_end)
    phone, edge, cloud = 25.0 / head_ms, 5.0 / edge_ms, 0.01
    d = root / "partition-policies"
    d.mkdir()
    (d / "policies.yaml").write_text(
        f"""\
apiVersion: edgefleet.io/v1alpha1
kind: HardwareClass
metadata: {{name: phone-cpu}}
spec: {{latencyScale: {{fp32: {phone:.6f}}}, callOverheadMs: 0}}
---
apiVersion: edgefleet.io/v1alpha1
kind: HardwareClass
metadata: {{name: edge-npu}}
spec: {{latencyScale: {{fp32: {edge:.6f}}}, callOverheadMs: 0}}
---
apiVersion: edgefleet.io/v1alpha1
kind: HardwareClass
metadata: {{name: cloud-gpu}}
spec: {{latencyScale: {{fp32: {cloud:.6f}}}, callOverheadMs: 0}}
---
apiVersion: edgefleet.io/v1alpha1
kind: DeviceGroup
metadata: {{name: phones}}
spec: {{hardwareClass: phone-cpu, selector: {{matchLabels: {{site: test}}}}}}
---
apiVersion: edgefleet.io/v1alpha1
kind: ComputePool
metadata: {{name: edge}}
spec:
  tier: edge
  hardwareClass: edge-npu
  nodes: {{selector: {{matchLabels: {{pool: edge}}}}}}
  clients: {{selector: {{matchLabels: {{site: test}}}}}}
  slotsPerNode: 4
  utilizationCap: 0.1
  defaultLink: {{bandwidthMbps: 0.05, rttMs: 0.5}}
  cloudLink: {{bandwidthMbps: 1000, rttMs: 1}}
---
apiVersion: edgefleet.io/v1alpha1
kind: ComputePool
metadata: {{name: cloud}}
spec:
  tier: cloud
  hardwareClass: cloud-gpu
  nodes: {{names: [cloud-1]}}
  slotsPerNode: 8
  utilizationCap: 0.1
  defaultLink: {{bandwidthMbps: 0.05, rttMs: 2000}}
---
apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {{name: digits-partitioned}}
spec:
  model: digits
  group: phones
  objectives:
    latency: {{percentile: 95, maxMs: {SLO_MS:g}}}
    minAccuracy: 0.99
  precisions: {{device: [fp32], edge: [fp32], cloud: [fp32]}}
  partitioning: {{enabled: true, edgePools: [edge], cloudPools: [cloud]}}
"""
    )
    return d


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, digits_model: DigitsArtifacts, eval_npz: Path
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("partition")
    controller, address = start_controller(root / "controller", free_port())
    fleet = Fleet(root=root, address=address, procs={"controller": controller})
    try:
        token = json.loads(fleet.ctl("token", "create", "--uses", "3", "-o", "json"))["token"]
        for device_id, hardware, extra in (
            ("phone-1", "phone-cpu", ["--label", "site=test", "--link", PHONE_LINK]),
            ("edge-1", "edge-npu", EDGE_EXTRA),
            ("cloud-1", "cloud-gpu", []),
        ):
            proc, agent_address = start_agent(
                address, root / device_id, hardware, token=token, device_id=device_id, extra=extra
            )
            fleet.procs[device_id], fleet.agents[device_id] = proc, agent_address
        fleet.ctl(
            "models", "import", str(digits_model.model_path), "--name", "digits",
            "--eval-data", str(eval_npz), "--precisions", "fp32,int8",
        )  # fmt: skip
        with AdminClient(address) as admin:
            wait_until(
                lambda: len(ds := admin.list_devices()) == 3 and all(d.connected and d.endpoint for d in ds),
                timeout=CONVERGE_S,
                what="every agent to connect and report its endpoint",
            )
        yield fleet
    finally:
        codes = {name: proc.terminate() for name, proc in reversed(fleet.procs.items())}
    assert codes == dict.fromkeys(codes, 0) or codes.get("edge-1") not in (None, 0), (
        f"unclean shutdown: {codes}"
    )


def _direct(model_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


def _converged(fleet: Fleet) -> bool:
    with AdminClient(fleet.address) as admin:
        devices = {d.id: d for d in admin.list_devices()}
    return all(d.desired_version > 0 and d.converged and not d.last_failure for d in devices.values())


def test_a_request_flows_phone_edge_cloud_and_equals_the_whole_model(
    fleet: Fleet, digits_model: DigitsArtifacts
) -> None:
    profile = json.loads(fleet.ctl("models", "describe", "digits", "-o", "json"))
    policies = _policies(fleet.root, profile)
    plan = json.loads(fleet.ctl("plan", "-f", str(policies), "-o", "json"))
    (phone,) = plan["devices"]
    assert phone["pattern"] == "device+edge+cloud", phone["reason"]
    assert [s["tier"] for s in phone["segments"]] == ["device", "edge", "cloud"]
    assert all(c > 0 for c in phone["cuts"]) and len(phone["cuts"]) == 2  # two cuts inside the model
    assert phone["edge_node"] == "edge-1" and phone["meets_slo"], phone["reason"]

    fleet.ctl("apply", "-f", str(policies), "-m", "partition e2e")
    wait_until(
        lambda: _converged(fleet), timeout=CONVERGE_S, what="phone, edge and cloud to acknowledge the plan"
    )
    with AdminClient(fleet.address) as admin:
        devices = {d.id: d for d in admin.list_devices()}
    assert devices["phone-1"].assignment is not None and devices["phone-1"].assignment.plan is not None
    assert len(devices["edge-1"].assignment.serve) == 1  # type: ignore[union-attr]
    assert len(devices["cloud-1"].assignment.serve) == 1  # type: ignore[union-attr]

    with np.load(digits_model.test_path) as test:
        x = test["x"].astype(np.float32)
    direct = _direct(digits_model.model_path, x)
    got: dict[str, list[np.ndarray]] = {}
    with AgentClient(fleet.agents["phone-1"]) as client:
        for start in range(0, len(x), 50):
            response = client.infer_response({"input": x[start : start + 50]}, timeout=10.0)
            assert response.path == "partitioned"
            assert [h.tier for h in response.hops] == ["device", "edge", "cloud"]
            assert [h.device_id for h in response.hops] == ["phone-1", "edge-1", "cloud-1"]
            assert all(h.compute_ms > 0 for h in response.hops)
            for t in response.outputs:
                got.setdefault(t.name, []).append(from_tensor(t))
    outputs = {name: np.concatenate(parts) for name, parts in got.items()}
    assert set(outputs) == set(direct)
    # The operator's view of the same path: fleet-agent infer names every hop.
    doc = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "infer",
                "--agent",
                fleet.agents["phone-1"],
                "--input",
                str(digits_model.sample_path),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert doc["path"] == "partitioned"
    assert [(h["tier"], h["device_id"]) for h in doc["hops"]] == [
        ("device", "phone-1"),
        ("edge", "edge-1"),
        ("cloud", "cloud-1"),
    ]
    assert (
        doc["outputs"]["label"]
        == _direct(digits_model.model_path, np.load(digits_model.sample_path).astype(np.float32))[
            "label"
        ].tolist()
    )
    for name, want in direct.items():
        if want.dtype.kind == "f":
            assert float(np.max(np.abs(outputs[name] - want))) <= 1e-5, name
        else:
            assert np.array_equal(outputs[name], want), name

    # Each request's hops reach the controller as telemetry: measured beside the plan's prediction.
    def latency() -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(fleet.ctl("latency", "phone-1", "-o", "json"))
        return doc

    requests = -(-len(x) // 50) + 1
    wait_until(lambda: latency()["measured"] >= requests, timeout=CONVERGE_S, what="the phone's telemetry")
    summary = latency()
    assert summary["paths"] == {"partitioned": requests} and summary["outcomes"] == {"ok": requests}
    assert summary["predicted_ms"] > 0 and summary["percentile"] == 95 and summary["slo_ms"] > 0
    hops = summary["hops"]
    assert [(h["tier"], h["device"], h["requests"]) for h in hops] == [
        ("device", "phone-1", requests),
        ("edge", "edge-1", requests),
        ("cloud", "cloud-1", requests),
    ]
    assert all(h["compute_ms"]["p50"] > 0 and h["compute_ms"]["predicted"] > 0 for h in hops)
    assert hops[1]["transfer_ms"]["predicted"] > 0 and hops[0]["transfer_ms"]["predicted"] == 0


def test_the_serving_agent_refuses_bad_requests_and_stays_healthy(fleet: Fleet) -> None:
    """Bad input to RunSegment gets a clear error code each; a good request afterwards still works."""
    with AdminClient(fleet.address) as admin:
        edge = admin.get_device("edge-1")
    assert edge.assignment is not None and edge.assignment.serve
    served = edge.assignment.serve[0]
    channel = grpc.insecure_channel(fleet.agents["edge-1"])
    stub = serde.SegmentServiceStub(channel)
    good_input = _segment_input(fleet, served.artifact_sha256)

    def call(req: RunSegmentRequest) -> grpc.RpcError | None:
        try:
            stub.RunSegment(serde.run_segment_request_to_pb(req), timeout=10.0)
        except grpc.RpcError as exc:
            return exc
        return None

    base = RunSegmentRequest(segment_sha256=served.artifact_sha256, inputs=(good_input,), tier="edge")
    cases = {
        "unknown segment": (
            RunSegmentRequest(segment_sha256="0" * 64, inputs=(good_input,), tier="edge"),
            "unknown_segment",
        ),
        "wrong name": (
            RunSegmentRequest(served.artifact_sha256, (_renamed(good_input, "nope"),), tier="edge"),
            "invalid_argument",
        ),
        "wrong dtype": (
            RunSegmentRequest(served.artifact_sha256, (_as_int64(good_input),), tier="edge"),
            "invalid_argument",
        ),
        "wrong shape": (
            RunSegmentRequest(served.artifact_sha256, (_wider(good_input),), tier="edge"),
            "invalid_argument",
        ),
    }
    try:
        for what, (req, code) in cases.items():
            err = call(req)
            assert err is not None, what
            assert serde.error_from_rpc_error(err).code == code, (what, err)
        huge = np.zeros((1, 9 * 2**20), dtype=np.float32)  # 36 MiB: over the request limit
        err = call(
            RunSegmentRequest(served.artifact_sha256, (to_tensor(good_input.name, huge),), tier="edge")
        )
        assert err is not None and err.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert call(base) is None  # unharmed
    finally:
        channel.close()


def test_on_a_stream_bad_requests_are_refused_in_band_and_the_stream_goes_on(fleet: Fleet) -> None:
    """The same refusals on one RunSegments stream (as agents call each other): each answered with
    its code, and the good request after them is answered on the same stream."""
    with AdminClient(fleet.address) as admin:
        edge = admin.get_device("edge-1")
    assert edge.assignment is not None and edge.assignment.serve
    served = edge.assignment.serve[0]
    good_input = _segment_input(fleet, served.artifact_sha256)
    requests = [
        (RunSegmentRequest("0" * 64, (good_input,), tier="edge", budget_ms=5000), "unknown_segment"),
        (
            RunSegmentRequest(served.artifact_sha256, (_renamed(good_input, "nope"),), tier="edge"),
            "invalid_argument",
        ),
        (
            RunSegmentRequest(served.artifact_sha256, (_as_int64(good_input),), tier="edge"),
            "invalid_argument",
        ),
        (RunSegmentRequest(served.artifact_sha256, (_wider(good_input),), tier="edge"), "invalid_argument"),
        (RunSegmentRequest(served.artifact_sha256, (good_input,), tier="edge", budget_ms=5000), ""),
    ]

    async def main() -> list[str]:
        channel = grpc.aio.insecure_channel(fleet.agents["edge-1"])
        try:
            call = serde.SegmentServiceStub(channel).RunSegments()
            codes = []
            for req, _ in requests:
                await call.write(serde.run_segment_request_to_pb(req))
                outcome = serde.segment_result_from_pb(await asyncio.wait_for(call.read(), 10.0))
                codes.append(outcome[1].code if isinstance(outcome, tuple) else "")
            await call.done_writing()
            return codes
        finally:
            await channel.close(None)

    assert asyncio.run(main()) == [code for _, code in requests]


def _segment_input(fleet: Fleet, sha256: str) -> Tensor:
    """A valid input for the edge's segment: what the phone's own segment produces for one row."""
    manifest = json.loads(fleet.ctl("models", "describe", "digits", "-o", "json"))
    blocks = [b for b in manifest["block_profiles"] if b.get("artifact_sha256") == sha256]
    spec = None
    if blocks:
        start = blocks[0]["start_cut"]
        spec = next(c for c in manifest["cut_points"] if c["index"] == start)["tensors"][0]
    else:  # a multi-block segment: read its manifest
        with AdminClient(fleet.address) as admin:
            doc = admin.get_artifact_manifest(sha256)
        spec = doc["inputs"][0]
    shape = tuple(1 if d in (-1, None) or isinstance(d, str) else d for d in spec["shape"])
    return to_tensor(spec["name"], np.zeros(shape, dtype=np.dtype(spec["dtype"])))


def _renamed(t: Tensor, name: str) -> Tensor:
    return Tensor(name, t.dtype, t.shape, t.data)


def _as_int64(t: Tensor) -> Tensor:
    return to_tensor(t.name, from_tensor(t).astype(np.int64))


def _wider(t: Tensor) -> Tensor:
    a = from_tensor(t)
    return to_tensor(t.name, np.zeros((*a.shape[:-1], a.shape[-1] + 3), dtype=a.dtype))


def test_killing_the_edge_answers_from_the_fallback_then_the_path_resumes(
    fleet: Fleet, digits_model: DigitsArtifacts
) -> None:
    """(Runs last: it kills the edge agent.) With the edge gone, the phone answers every request from
    its fallback variant within the deadline, marked degraded; once the edge is back (same address,
    restarted from its data dir while nothing changed) the probes find it and the partitioned path
    resumes by itself."""
    x = np.load(digits_model.sample_path).astype(np.float32)
    want = _direct(digits_model.model_path, x)["label"].tolist()
    fleet.procs["edge-1"].kill9()
    with AgentClient(fleet.agents["phone-1"]) as client:
        for _ in range(5):
            started = time.monotonic()
            response = client.infer_response({"input": x}, timeout=3.0)
            elapsed = time.monotonic() - started
            assert elapsed < 3.0, f"took {elapsed:.2f}s: past the deadline"
            assert response.path == "fallback", response
            assert "edge" in response.fallback_reason and (
                "unreachable" in response.fallback_reason or "did not answer" in response.fallback_reason
            ), response.fallback_reason
            assert [h.tier for h in response.hops] == ["device"]
            labels = {t.name: from_tensor(t) for t in response.outputs}["label"].tolist()
            assert labels == want

        proc, _ = start_agent(
            fleet.address, fleet.root / "edge-1", "edge-npu", device_id="edge-1", extra=EDGE_EXTRA
        )
        fleet.procs["edge-1"] = proc

        def resumed() -> bool:
            r = client.infer_response({"input": x}, timeout=3.0)
            assert r.path in ("fallback", "partitioned"), r
            return r.path == "partitioned"

        wait_until(resumed, timeout=CONVERGE_S, what="the partitioned path to resume")
        response = client.infer_response({"input": x}, timeout=3.0)
        assert response.path == "partitioned" and [h.tier for h in response.hops] == [
            "device",
            "edge",
            "cloud",
        ]
    summary = json.loads(fleet.ctl("latency", "phone-1", "-o", "json"))
    assert summary["paths"]["fallback"] >= 5 and summary["outcomes"].get("error", 0) == 0
