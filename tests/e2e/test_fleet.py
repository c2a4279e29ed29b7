"""End to end: a real controller process and three real agent processes over loopback gRPC.

One fleet per module (starting processes costs seconds); each test leaves it converged and
healthy for the next, and says what state it starts from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

from agent.client import AgentClient
from common import serde
from common.errors import InvalidArgument
from common.tensors import to_tensor
from common.types import InferRequest
from controller.cli import render
from controller.client import AdminClient
from controller.toolchain.digits import DigitsArtifacts
from simulator.processes import Proc, fleetctl, free_port, start_agent, start_controller, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

AGENTS = {"phone-1": "phone-cpu", "edge-1": "edge-npu", "cloud-1": "cloud-gpu"}
CONVERGE_S = 60.0


@dataclass
class Fleet:
    root: Path
    port: int
    controller: Proc
    address: str
    agents: dict[str, tuple[Proc, str]] = field(default_factory=dict)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return fleetctl(*args, controller=self.address, check=check)

    def devices(self) -> dict[str, dict[str, object]]:
        # In-process AdminClient for polling (a CLI process per poll costs a second of imports); it
        # renders exactly what `fleetctl get devices -o json` prints, which a test checks separately.
        with AdminClient(self.address) as client:
            return {d.id: render.device_doc(d) for d in client.list_devices()}

    def device(self, device_id: str) -> dict[str, object]:
        with AdminClient(self.address) as client:
            return render.device_doc(client.get_device(device_id))

    def restart_controller(self) -> None:
        self.controller, self.address = start_controller(self.root / "controller", self.port)

    def agent_client(self, device_id: str) -> AgentClient:
        return AgentClient(self.agents[device_id][1])

    def wait_converged(self, device_ids: list[str], *, sha256: str) -> dict[str, dict[str, object]]:
        def converged() -> dict[str, dict[str, object]] | None:
            devices = self.devices()
            ok = all(
                devices[d]["connected"]
                and devices[d]["status"] == "converged"
                and devices[d]["active_sha256"] == sha256
                for d in device_ids
            )
            return devices if ok else None

        return wait_until(converged, timeout=CONVERGE_S, what=f"{device_ids} to converge on {sha256[:12]}")


def _variant_of(src: Path, dst: Path, tag: str) -> Path:
    """The same network with different bytes (a new sha256), as a retrained model would have."""
    model = onnx.load(str(src))
    model.doc_string = f"edgefleet e2e {tag}"
    onnx.save(model, str(dst))
    return dst


def _sha_of(fleet: Fleet, model: str) -> str:
    models = json.loads(fleetctl("get", "models", "-o", "json", controller=fleet.address).stdout)
    return next(m["variants"][0]["sha256"] for m in models if m["name"] == model)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, digits_model: DigitsArtifacts) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    port = free_port()
    controller, address = start_controller(root / "controller", port)
    fleet = Fleet(root=root, port=port, controller=controller, address=address)
    try:
        token = json.loads(
            fleetctl("token", "create", "--uses", "3", "-o", "json", controller=address).stdout
        )["token"]
        for device_id, hardware in AGENTS.items():
            fleet.agents[device_id] = start_agent(
                address, root / device_id, hardware, token=token, device_id=device_id
            )
        fleetctl("models", "import", str(digits_model.model_path), "--name", "digits", controller=address)
        yield fleet
    finally:
        codes = {name: proc.terminate() for name, (proc, _) in fleet.agents.items()}
        codes["controller"] = fleet.controller.terminate()
    # A clean SIGTERM shutdown exits 0; anything else is a bug worth seeing.
    assert codes == dict.fromkeys(codes, 0), f"unclean shutdown: {codes}"


def _direct(model_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x}), strict=True))


def test_enroll_assign_converge_and_infer_like_direct_onnxruntime(
    fleet: Fleet, digits_model: DigitsArtifacts
) -> None:
    listed = json.loads(fleet.ctl("get", "devices", "-o", "json").stdout)
    assert {"id", "hardware", "connected", "desired_version", "acked_version", "assignment"} <= set(listed[0])
    devices = {d["id"]: d for d in listed}
    assert sorted(devices) == sorted(AGENTS)
    assert {d: devices[d]["hardware"] for d in devices} == AGENTS
    assert all(d["resources"]["cpu_cores"] > 0 for d in devices.values())  # real resources reported
    sha = _sha_of(fleet, "digits")

    for device_id in AGENTS:
        fleet.ctl("assign", device_id, "--model", "digits")
    converged = fleet.wait_converged(list(AGENTS), sha256=sha)
    assert all(d["desired_version"] == d["acked_version"] >= 1 for d in converged.values())

    test = np.load(digits_model.test_path)
    x, y = test["x"].astype(np.float32), test["y"]
    expected = _direct(digits_model.model_path, x)
    for device_id in AGENTS:
        with fleet.agent_client(device_id) as client:
            outputs, answered_by, _ = client.infer({"input": x})
        assert answered_by == sha
        np.testing.assert_array_equal(outputs["label"], expected["label"])
        assert np.max(np.abs(outputs["probabilities"] - expected["probabilities"])) <= 1e-6
        assert float(np.mean(outputs["label"] == y)) >= 0.9

    # Telemetry of those requests reaches the controller, batched with sequence numbers.
    wait_until(
        lambda: all(fleet.devices()[d]["records_received"] >= 1 for d in AGENTS),
        timeout=CONVERGE_S,
        what="inference telemetry from every agent",
    )


def test_fleet_agent_infer_cli_prints_outputs_as_json(fleet: Fleet, digits_model: DigitsArtifacts) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "infer",
            "--agent",
            fleet.agents["phone-1"][1],
            "--input",
            str(digits_model.sample_path),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(result.stdout)
    sample = np.load(digits_model.sample_path)
    expected = _direct(digits_model.model_path, sample.astype(np.float32))
    assert doc["outputs"]["label"] == expected["label"].tolist()
    assert np.allclose(doc["outputs"]["probabilities"], expected["probabilities"], atol=1e-6)
    assert doc["path"] == "local"
    assert [h["tier"] for h in doc["hops"]] == ["device"]


def test_kill9_controller_restart_agents_reconnect_and_converge(
    fleet: Fleet, digits_model: DigitsArtifacts
) -> None:
    before = fleet.devices()
    v2 = _variant_of(digits_model.model_path, fleet.root / "digits-v2.onnx", "v2")
    fleet.ctl("models", "import", str(v2), "--name", "digits-v2")
    sha2 = _sha_of(fleet, "digits-v2")

    # phone-1 is off while the new version is assigned, so its desired state is still undelivered
    # (persisted, not acknowledged) when the controller is killed.
    phone_proc, _ = fleet.agents["phone-1"]
    assert phone_proc.terminate() == 0
    for device_id in AGENTS:
        fleet.ctl("assign", device_id, "--model", "digits-v2")
    assert fleet.device("phone-1")["status"] == "pending"
    fleet.controller.kill9()

    # With the controller gone, devices keep answering from their local model.
    with fleet.agent_client("edge-1") as client:
        outputs, _, _ = client.infer({"input": np.load(digits_model.sample_path).astype(np.float32)})
    assert outputs["label"].shape == (8,)

    fleet.restart_controller()
    # phone-1 comes back too: no token needed, its identity is in its data dir.
    fleet.agents["phone-1"] = start_agent(fleet.address, fleet.root / "phone-1", AGENTS["phone-1"])
    converged = fleet.wait_converged(list(AGENTS), sha256=sha2)
    assert sorted(converged) == sorted(before), "a device was lost or duplicated"
    assert all(d["desired_version"] == before[i]["desired_version"] + 1 for i, d in converged.items())
    assert all(d["last_known_good_sha256"] == before[i]["active_sha256"] for i, d in converged.items())


def test_corrupt_artifact_is_refused_and_previous_model_keeps_serving(
    fleet: Fleet, digits_model: DigitsArtifacts
) -> None:
    start = fleet.device("phone-1")
    serving = start["active_sha256"]
    bad = _variant_of(digits_model.model_path, fleet.root / "digits-corrupt.onnx", "corrupt")
    fleet.ctl("models", "import", str(bad), "--name", "digits-corrupt")
    sha = _sha_of(fleet, "digits-corrupt")
    # Rot on the controller's disk after import: the agent must notice, whatever the controller serves.
    stored = fleet.root / "controller" / "artifacts" / "sha256" / sha
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    fleet.ctl("assign", "phone-1", "--model", "digits-corrupt")
    device = wait_until(
        lambda: (d := fleet.device("phone-1"))["last_failure"] and d,
        timeout=CONVERGE_S,
        what="phone-1 to report the checksum failure",
    )
    assert device["last_failure"]["reason"] == "checksum_mismatch"
    assert device["status"] == "failed"
    assert device["active_sha256"] == serving
    with fleet.agent_client("phone-1") as client:
        _, answered_by, _ = client.infer({"input": np.load(digits_model.sample_path).astype(np.float32)})
    assert answered_by == serving


def test_model_that_fails_its_smoke_test_rolls_back_to_last_known_good(fleet: Fleet) -> None:
    serving = fleet.device("edge-1")["active_sha256"]
    # Loads fine in onnxruntime and passes onnx.checker, but answers zeros with -inf: unfit to serve.
    graph = oh.make_graph(
        [oh.make_node("Log", ["input"], ["y"])],
        "log",
        [oh.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["n", 64])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 64])],
    )
    path = fleet.root / "broken.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), str(path))
    fleet.ctl("models", "import", str(path), "--name", "broken")
    fleet.ctl("assign", "edge-1", "--model", "broken")
    device = wait_until(
        lambda: (d := fleet.device("edge-1"))["last_failure"] and d,
        timeout=CONVERGE_S,
        what="edge-1 to report the smoke-test failure",
    )
    assert device["last_failure"]["reason"] == "smoke_test_failed"
    assert device["active_sha256"] == serving
    assert device["acked_version"] == device["desired_version"]  # settled: not resent forever

    # Assigning a good model again recovers the device and clears the failure.
    fleet.ctl("assign", "edge-1", "--model", "digits")
    recovered = fleet.wait_converged(["edge-1"], sha256=_sha_of(fleet, "digits"))["edge-1"]
    assert fleet.device("edge-1")["last_failure"] is None
    assert recovered["status"] == "converged"


def test_bad_admin_input_gets_a_clear_error_and_changes_nothing(fleet: Fleet, tmp_path: Path) -> None:
    before_devices, before_models = fleet.devices(), fleet.ctl("get", "models", "-o", "json").stdout
    artifacts = sorted((fleet.root / "controller" / "artifacts").rglob("*"))

    unknown_device = fleet.ctl("assign", "nope", "--model", "digits", check=False)
    assert unknown_device.returncode == 1 and "device 'nope' not found" in unknown_device.stderr

    unknown_model = fleet.ctl("assign", "phone-1", "--model", "nope", check=False)
    assert unknown_model.returncode == 1 and "model 'nope' not found" in unknown_model.stderr

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    malformed = fleet.ctl("models", "import", str(garbage), "--name", "garbage", check=False)
    assert malformed.returncode == 2 and "not a valid ONNX model" in malformed.stderr

    bad_ttl = fleet.ctl("token", "create", "--ttl", "soon", check=False)
    assert bad_ttl.returncode == 2 and "invalid duration 'soon'" in bad_ttl.stderr

    assert fleet.ctl("get", "models", "-o", "json").stdout == before_models
    assert sorted((fleet.root / "controller" / "artifacts").rglob("*")) == artifacts
    after = fleet.devices()
    assert {d: (v["desired_version"], v["acked_version"]) for d, v in after.items()} == {
        d: (v["desired_version"], v["acked_version"]) for d, v in before_devices.items()
    }


def test_used_up_token_is_refused_and_the_agent_exits_with_the_reason(fleet: Fleet) -> None:
    token = json.loads(fleet.ctl("token", "create", "--uses", "1", "-o", "json").stdout)["token"]
    first, _ = start_agent(
        fleet.address, fleet.root / "extra-1", "phone-cpu", token=token, device_id="extra-1"
    )
    try:
        wait_until(
            lambda: fleet.devices().get("extra-1", {}).get("connected"), timeout=CONVERGE_S, what="extra-1"
        )
        second = Proc(
            "agent-extra-2",
            [
                "-m",
                "agent.cli",
                "run",
                "--controller",
                fleet.address,
                "--data-dir",
                str(fleet.root / "extra-2"),
                "--hardware",
                "phone-cpu",
                "--token",
                token,
                "--device-id",
                "extra-2",
            ],
        )
        assert second.proc.wait(timeout=60) == 1
        second.terminate()
        assert "enrollment refused" in second.log() and "has no uses left" in second.log()
        assert "extra-2" not in fleet.devices()
    finally:
        assert first.terminate() == 0


def test_bad_inference_input_is_refused_and_the_agent_stays_healthy(
    fleet: Fleet, digits_model: DigitsArtifacts
) -> None:
    x = np.load(digits_model.sample_path).astype(np.float32)
    with fleet.agent_client("cloud-1") as client:
        with pytest.raises(InvalidArgument, match="'wrong'"):
            client.infer({"wrong": x})
        with pytest.raises(InvalidArgument, match="input"):
            client.infer({"input": x.astype(np.float64)})
        with pytest.raises(InvalidArgument, match="input"):
            client.infer({"input": x[:, :10]})
        with pytest.raises(InvalidArgument, match="at most 33554432"):
            client.infer({"input": np.zeros((140_000, 64), np.float32)})  # 35.8 MB: over the Infer input cap
        outputs, _, _ = client.infer({"input": x})
    assert outputs["label"].shape == (8,)

    # Past the agent server's own message cap (the client's cap lifted so the bytes really reach it).
    request = serde.infer_request_to_pb(
        InferRequest(inputs=(to_tensor("input", np.zeros((300_000, 64), np.float32)),))
    )  # 76.8 MB
    with (
        grpc.insecure_channel(
            fleet.agents["cloud-1"][1], options=[("grpc.max_send_message_length", -1)]
        ) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        serde.AgentServiceStub(channel).Infer(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with fleet.agent_client("cloud-1") as client:
        outputs, _, _ = client.infer({"input": x})  # the agent is unharmed
    assert outputs["label"].shape == (8,)
