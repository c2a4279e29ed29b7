"""Policies end to end over real gRPC: plan, diff, apply, history, re-planning — against a real
controller holding the digits model with measured block profiles, and agents speaking the protocol.

The phones are told (by a HardwareClass policy) to be far too slow to meet the SLO locally, so the
planner must offload them to the edge node; one phone's link then collapses, and the re-plan moves it
back to running alone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from common import serde
from common.errors import InvalidArgument
from common.types import (
    Assignment,
    AssignmentAck,
    AssignmentFailure,
    DeviceIdentity,
    HardwareProfile,
    Heartbeat,
    Hello,
    LinkMeasurement,
    PolicyFile,
    ReportedState,
    TelemetryAck,
    Welcome,
)
from controller.toolchain.digits import DigitsArtifacts
from tests.integration.harness import READ_TIMEOUT_S, FakeAgent, Fleet, Stream, run, running_controller

pytestmark = pytest.mark.timeout(180)

NEVER_S = 1e9  # the scheduled re-plan stays out of the way: tests run it when they mean to

GROUPS = """\
apiVersion: edgefleet.io/v1alpha1
kind: DeviceGroup
metadata: {name: eu-phones}
spec:
  hardwareClass: phone-cpu
  selector: {matchLabels: {region: eu}}
---
apiVersion: edgefleet.io/v1alpha1
kind: HardwareClass
metadata: {name: phone-cpu}
spec:
  # Far slower than the controller host: no phone meets the SLO running digits alone.
  latencyScale: {fp32: 20000, int8: 20000}
"""

POOLS = """\
apiVersion: edgefleet.io/v1alpha1
kind: ComputePool
metadata: {name: eu-edge}
spec:
  tier: edge
  hardwareClass: edge-npu
  nodes: {selector: {matchLabels: {edgefleet.io/pool: eu-edge}}}
  clients: {selector: {matchLabels: {region: eu}}}
  slotsPerNode: 4
  defaultLink: {bandwidthMbps: 50, rttMs: 5}
"""

DEPLOYMENT = """\
apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {name: digits-eu}
spec:
  model: digits
  group: eu-phones
  objectives:
    latency: {percentile: 95, maxMs: 50}
    minAccuracy: 0.99
  partitioning: {enabled: true, edgePools: [eu-edge]}
  requestRate: 2
"""


def phone(device_id: str) -> HardwareProfile:
    return HardwareProfile("phone-cpu", cpu_cores=8, memory_bytes=4 * 2**30, labels={"region": "eu"})


EDGE_ENDPOINT = "127.0.0.1:47001"
EDGE = HardwareProfile(
    "edge-npu", cpu_cores=8, memory_bytes=16 * 2**30, labels={"edgefleet.io/pool": "eu-edge"}
)


def policy_dir(root: Path, deployment: str = DEPLOYMENT) -> Path:
    d = root / "policies"
    d.mkdir(exist_ok=True)
    (d / "groups.yaml").write_text(GROUPS)
    (d / "pools.yaml").write_text(POOLS)
    (d / "deployments.yaml").write_text(deployment)
    return d


def files_of(d: Path) -> list[PolicyFile]:
    return [PolicyFile(str(p), p.read_text()) for p in sorted(d.glob("*.yaml"))]


async def enroll(fleet: Fleet, device_id: str, hw: HardwareProfile) -> FakeAgent:
    stub = serde.ControllerServiceStub(fleet.channel())
    pb = await stub.Enroll(
        serde.enroll_request_to_pb(await fleet.token(), hw, device_id, ""), timeout=READ_TIMEOUT_S
    )
    identity: DeviceIdentity = serde.enroll_response_from_pb(pb)
    return FakeAgent(fleet, identity)


async def online(
    agent: FakeAgent, hw: HardwareProfile, links: tuple[LinkMeasurement, ...] = (), endpoint: str = ""
) -> Stream:
    stream = agent.connect()
    await stream.send(Hello(hardware=hw, reported=ReportedState(), links=links, endpoint=endpoint))
    await stream.expect(Welcome)
    return stream


async def setup(fleet: Fleet, digits: DigitsArtifacts, eval_npz: Path) -> tuple[dict[str, Stream], FakeAgent]:
    await fleet.call_admin(
        fleet.admin.import_model,
        digits.model_path,
        name="digits",
        eval_data=eval_npz,
        precisions=("fp32", "int8"),
    )
    streams: dict[str, Stream] = {}
    edge = await enroll(fleet, "edge-1", EDGE)
    # An edge node serves only once it has said where peers reach it.
    streams["edge-1"] = await online(edge, EDGE, endpoint=EDGE_ENDPOINT)
    for i in (1, 2, 3):
        device_id = f"phone-{i}"
        agent = await enroll(fleet, device_id, phone(device_id))
        links = (LinkMeasurement("eu-edge", 100.0, 4.0, 6.0),)
        streams[device_id] = await online(agent, phone(device_id), links)
    return streams, edge


def test_plan_diff_apply_history_and_replan(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path
) -> None:
    async def scenario() -> None:
        async with running_controller(
            tmp_path / "ctl", replan_settle_s=NEVER_S, replan_every_s=NEVER_S
        ) as fleet:
            streams, edge = await setup(fleet, digits_model, eval_npz)
            files = files_of(policy_dir(tmp_path))

            # plan: a dry run; the phones offload to the edge node, the node itself is not a client.
            doc = await fleet.call_admin(fleet.admin.plan_policies, files, explain=["phone-1"], devices=True)
            planned = {d["device"]: d for d in doc["devices"]}
            assert set(planned) == {"phone-1", "phone-2", "phone-3"}
            for d in planned.values():
                assert d["pattern"] == "device+edge" and d["edge_node"] == "edge-1", d
                assert d["meets_slo"] and d["meets_accuracy"] and d["binding"] is None
                assert d["fallback"] in ("fp32", "int8")
                assert d["segments"][-1]["tier"] == "edge" and d["segments"][-1]["where"] == "edge-1"
            assert any(
                a["pattern"] == "local" and "misses the SLO" in a["why_not"]
                for a in planned["phone-1"]["alternatives"]
            )
            assert doc["summary"]["meeting_objectives"] == 3
            assert [u["node"] for u in doc["usage"]] == ["edge-1"] and doc["usage"][0]["devices"] == 3
            assert all(d.assignment is None for d in (await fleet.devices()).values())  # a dry run

            # diff: every document new, three assignments to change.
            policy_diff, changes, summary = await fleet.call_admin(fleet.admin.diff_policies, files)
            assert {(x["kind"], x["name"]) for x in policy_diff["added"]} == {
                ("DeviceGroup", "eu-phones"),
                ("HardwareClass", "phone-cpu"),
                ("ComputePool", "eu-edge"),
                ("ModelDeployment", "digits-eu"),
            }
            assert {c.device_id for c in changes} == {"phone-1", "phone-2", "phone-3"}
            assert all(c.before == "(nothing)" and "device+edge" in c.after for c in changes)
            assert summary["devices"] == 3

            # apply: recorded with who and where from; the connected phones get their plans pushed.
            record, changed, applied = await fleet.call_admin(
                fleet.admin.apply_policies,
                files,
                applied_by="ops@test",
                git_commit="a" * 40,
                git_dirty=True,
                source="policies/",
                message="first",
            )
            assert changed and record.id == 1 and record.devices_changed == 4  # 3 phones + the edge node
            assert (record.applied_by, record.git_commit, record.git_dirty) == ("ops@test", "a" * 40, True)
            assert {c.device_id for c in applied} == {"phone-1", "phone-2", "phone-3"}
            wanted: set[str] = set()
            for i in (1, 2, 3):
                pushed = await streams[f"phone-{i}"].expect(Assignment)
                assert pushed.plan is not None and pushed.plan.pattern == "device+edge"
                assert pushed.plan.edge_node == "edge-1" and pushed.plan.deployment == "digits-eu"
                assert pushed.variant == pushed.plan.fallback_variant  # what it answers with alone
                assert pushed.model_name == "digits" and pushed.artifact_sha256
                edge_segment = pushed.plan.segments[-1]
                assert edge_segment.artifact_sha256 and edge_segment.artifact_size_bytes > 0
                assert [(e.device_id, e.address) for e in edge_segment.endpoints] == [
                    ("edge-1", EDGE_ENDPOINT)
                ]
                wanted.add(edge_segment.artifact_sha256)
            # The edge node is told to keep every segment its clients send it loaded (it runs no model
            # of its own here), and the artifacts are really there to fetch.
            node = await streams["edge-1"].expect(Assignment)
            assert node.model_name == "" and {s.artifact_sha256 for s in node.serve} == wanted
            for sha in wanted:
                chunks = await edge.fetch(sha)
                assert sum(len(c.data) for c in chunks) == next(
                    s.artifact_size_bytes for s in node.serve if s.artifact_sha256 == sha
                )

            # apply again: nothing changes, nothing is recorded, nothing is pushed.
            record2, changed2, applied2 = await fleet.call_admin(
                fleet.admin.apply_policies, files, applied_by="ops@test", message="again"
            )
            assert not changed2 and record2.id == 1 and applied2 == ()
            for s in streams.values():
                await s.expect_nothing_else()
            history = await fleet.call_admin(fleet.admin.list_policy_applies)
            assert [a.id for a in history] == [1] and history[0].message == "first"

            # A phone's link collapses: the heartbeat tells the controller, the re-plan moves it local.
            # Local misses the SLO too (the phone is 20000x the host: 6-50 s, with the digits blocks'
            # measured times), so the link must be clearly worse than that whatever was measured
            # (5 s of round trip was not, now and then: the re-plan then kept the edge as the closer).
            await streams["phone-2"].send(
                Heartbeat(sent_at_ms=0, links=(LinkMeasurement("eu-edge", 1e-6, 3_600_000.0),))
            )
            await streams["phone-2"].expect(TelemetryAck)  # the heartbeat has been handled (and answered)
            assert any("phone-2" in r and "links" in r for r in fleet.controller.replanner.reasons)
            moved = await fleet.controller.replanner.run()
            assert moved == ["phone-2"]
            pushed = await streams["phone-2"].expect(Assignment)
            assert pushed.plan is not None and pushed.plan.pattern == "local"
            for other in ("phone-1", "phone-3"):  # hysteresis: the others stay where they are
                await streams[other].expect_nothing_else()
            assert await fleet.controller.replanner.run() == []  # nothing changed since: a no-op
            assert (
                len(await fleet.call_admin(fleet.admin.list_policy_applies)) == 1
            )  # re-plans are not applies

            # phone-3 cannot run its version: neither the same files again nor a re-plan resend it
            # (an operator retries by hand); the failure stays on record.
            v3 = (await fleet.devices())["phone-3"].desired_version
            await streams["phone-3"].send(
                AssignmentAck(
                    version=v3,
                    reported=ReportedState(),
                    failure=AssignmentFailure.LOAD_FAILED,
                    message="segments: corrupt",
                )
            )
            await streams["phone-3"].send(Heartbeat(sent_at_ms=0))
            await streams["phone-3"].expect(TelemetryAck)  # the ack before it has been handled
            _, changed3, _ = await fleet.call_admin(fleet.admin.apply_policies, files, applied_by="ops@test")
            assert not changed3
            assert await fleet.controller.replanner.run() == []
            assert (await fleet.devices())["phone-3"].desired_version == v3

            # The deployment is deleted from Git: the devices it placed run nothing, and the edge node
            # stops serving their segments (nothing keeps capacity for a plan no policy makes).
            d = policy_dir(tmp_path)
            (d / "deployments.yaml").unlink()
            removed = files_of(d)
            policy_diff, changes, _ = await fleet.call_admin(fleet.admin.diff_policies, removed)
            assert [(x["kind"], x["name"]) for x in policy_diff["removed"]] == [
                ("ModelDeployment", "digits-eu")
            ]
            assert {c.device_id: c.after for c in changes} == {
                "phone-1": "(nothing)",
                "phone-2": "(nothing)",
                "phone-3": "(nothing)",
            }
            _, changed4, _ = await fleet.call_admin(
                fleet.admin.apply_policies, removed, applied_by="ops@test"
            )
            assert changed4
            for i in (1, 2, 3):
                emptied = await streams[f"phone-{i}"].expect(Assignment)
                assert emptied.is_empty and emptied.plan is None
            node = await streams["edge-1"].expect(Assignment)
            assert node.serve == ()
            assert await fleet.controller.replanner.run() == []

    run(scenario(), timeout=150)


def test_bad_policies_are_refused_with_locations_and_change_nothing(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path
) -> None:
    async def scenario() -> None:
        async with running_controller(
            tmp_path / "ctl", replan_settle_s=NEVER_S, replan_every_s=NEVER_S
        ) as fleet:
            await setup(fleet, digits_model, eval_npz)
            bad = DEPLOYMENT.replace("model: digits", "model: minilm").replace("maxMs: 50", "maxMs: -1")
            files = files_of(policy_dir(tmp_path, bad))
            err = await fleet.admin_error(fleet.admin.apply_policies, files, applied_by="ops@test")
            assert isinstance(err, InvalidArgument) and err.code == "invalid_policy"
            assert "deployments.yaml:8:31: spec.objectives.latency.maxMs" in str(
                err
            )  # the shape error, located
            fixed_shape = DEPLOYMENT.replace("model: digits", "model: minilm")
            files = files_of(policy_dir(tmp_path, fixed_shape))
            err = await fleet.admin_error(fleet.admin.apply_policies, files, applied_by="ops@test")
            assert "deployments.yaml:5:" in str(err) and "'minilm' is not in the controller" in str(err)
            assert await fleet.call_admin(fleet.admin.list_policy_applies) == ()
            assert all(d.assignment is None for d in (await fleet.devices()).values())

    run(scenario(), timeout=150)


def test_fleetctl_plan_diff_apply_history_in_a_git_checkout(
    tmp_path: Path, digits_model: DigitsArtifacts, eval_npz: Path
) -> None:
    from typer.testing import CliRunner

    from controller.cli.main import app

    runner = CliRunner()
    repo = tmp_path / "repo"
    repo.mkdir()
    d = policy_dir(repo)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, timeout=30
        ).stdout.strip()

    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "policies")
    head = git("rev-parse", "HEAD")

    async def cli(*args: str) -> tuple[int, str]:
        result = await asyncio.to_thread(runner.invoke, app, list(args), env={"EDGEFLEET_USER": "alice"})
        return result.exit_code, result.output

    async def scenario() -> None:
        async with running_controller(
            tmp_path / "ctl", replan_settle_s=NEVER_S, replan_every_s=NEVER_S
        ) as fleet:
            await setup(fleet, digits_model, eval_npz)
            ctl = ("--controller", fleet.address)
            code, output = await cli("plan", "-f", str(d), *ctl)
            assert code == 0, output
            assert "3 devices planned, 3 meet" in output and "device+edge" in output and "edge-1" in output
            code, output = await cli("plan", "-f", str(d), "--explain", "phone-1", *ctl)
            assert code == 0 and "misses the SLO" in output and "hop device -> edge" in output, output
            code, output = await cli("diff", "-f", str(d), *ctl)
            assert (
                code == 0 and "+ ModelDeployment/digits-eu" in output and "3 device assignments" in output
            ), output

            code, output = await cli("apply", "-f", str(d), "-m", "roll out", *ctl)
            assert code == 0 and f"from {head[:12]}" in output and "4 device assignments changed" in output, (
                output
            )
            code, output = await cli("apply", "-f", str(d), *ctl)
            assert code == 0 and "unchanged" in output, output
            code, output = await cli("describe", "device", "phone-1", "-o", "json", *ctl)
            plan = json.loads(output)["assignment"]["plan"]
            assert plan["pattern"] == "device+edge" and plan["edge_node"] == "edge-1", plan
            assert plan["deployment"] == "digits-eu" and plan["segments"][-1]["where"] == "edge-1"
            assert json.loads(output)["links"] == [
                {"pool": "eu-edge", "bandwidth_mbps": 100.0, "rtt_ms": 4.0, "rtt_p95_ms": 6.0}
            ]

            # Edit without committing: the next apply records the commit and that the tree was dirty.
            (d / "deployments.yaml").write_text(DEPLOYMENT.replace("requestRate: 2", "requestRate: 3"))
            code, output = await cli("diff", "-f", str(d), "-o", "json", *ctl)
            changed = json.loads(output)["policies"]["changed"]
            assert (
                changed
                == [
                    {
                        "kind": "ModelDeployment",
                        "name": "digits-eu",
                        "fields": [{"path": "spec.requestRate", "old": 2, "new": 3}],
                    }
                ]
                or changed[0]["fields"][0]["path"] == "spec.requestRate"
            ), changed
            code, output = await cli("apply", "-f", str(d), *ctl)
            assert code == 0 and "(dirty tree)" in output, output

            code, output = await cli("history", "-o", "json", *ctl)
            assert code == 0, output
            history = json.loads(output)
            assert [h["id"] for h in history] == [2, 1]
            assert history[0]["git_commit"] == head and history[0]["git_dirty"] is True
            assert history[1]["git_dirty"] is False and history[1]["message"] == "roll out"
            assert all(h["applied_by"].startswith("alice@") for h in history)

            # Bad input is refused before anything is sent: file, line and field path, exit 2.
            (d / "deployments.yaml").write_text(
                DEPLOYMENT.replace("group: eu-phones", "group: eu-phones\n  colour: red")
            )
            code, output = await cli("apply", "-f", str(d), *ctl)
            assert code == 2 and "deployments.yaml:7:" in output and "colour" in output, output
            assert [a.id for a in await fleet.call_admin(fleet.admin.list_policy_applies)] == [2, 1]

    run(scenario(), timeout=150)
