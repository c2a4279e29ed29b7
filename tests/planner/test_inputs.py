"""From the controller's state to the planner's input: models (profiles, losses, per-class times)
and policies (groups, pools, hardware classes) resolved against enrolled devices."""

from __future__ import annotations

import dataclasses

from common.types import (
    BlockAccuracy,
    BlockProfile,
    CallOverhead,
    ClassBlockProfile,
    ClassCallOverhead,
    CutPoint,
    DataType,
    Device,
    HardwareProfile,
    Model,
    ModelVariant,
    TensorSpec,
)
from controller.planner.inputs import hardware_classes, plan_input, planner_model
from controller.planner.types import HOST, ConfigKey, Link, Pattern, Tier
from controller.policy import load_policy_texts

SPEC_IN = TensorSpec("x", DataType.FLOAT32, (-1, 64))
SPEC_OUT = TensorSpec("y", DataType.FLOAT32, (-1, 10))


def model(*, accuracy: bool = True, classes: bool = False) -> Model:
    variants = (
        ModelVariant("fp32", "a" * 64, 1000, (SPEC_IN,), (SPEC_OUT,), precision="fp32", accuracy=0.97),
        ModelVariant(
            "int8", "b" * 64, 300, (SPEC_IN,), (SPEC_OUT,), precision="int8", accuracy=0.96, cosine=0.999
        ),
    )
    blocks = []
    for p, scale, size in (("fp32", 1.0, 500), ("int8", 0.5, 150)):
        for start, end in ((0, 5), (5, 0)):
            for batch in (1, 32):
                blocks.append(
                    BlockProfile(start, end, p, batch, scale * (1 if batch == 1 else 8), "", "c" * 64, size)
                )
    acc = (
        (
            BlockAccuracy(0, 0, "fp32", accuracy=0.97),
            BlockAccuracy(0, 5, "int8", accuracy=0.965),
            BlockAccuracy(5, 0, "int8", accuracy=0.97),
        )
        if accuracy
        else ()
    )
    cls = (
        tuple(
            ClassBlockProfile("phone-cpu", s, e, p, 1, ms, devices=2)
            for (s, e) in ((0, 5), (5, 0))
            for p, ms in (("fp32", 7.0), ("int8", 3.0))
        )
        if classes
        else ()
    )
    return Model(
        name="m",
        variants=variants,
        cut_points=(CutPoint(5, (TensorSpec("h", DataType.FLOAT32, (-1, 32)),), 128),),
        block_profiles=tuple(blocks),
        block_accuracy=acc,
        class_profiles=cls,
    )


def test_planner_model_uses_what_the_import_measured() -> None:
    pm = planner_model(model(classes=True))
    assert pm is not None
    assert pm.cut_indices == (5,) and pm.blocks == 2
    assert pm.boundary_bytes == (64 * 4, 128, 10 * 4)
    assert pm.block_ms[(HOST, "fp32", 1)] == (1.0, 1.0) and pm.block_ms[(HOST, "int8", 32)] == (4.0, 4.0)
    assert pm.block_ms[("phone-cpu", "fp32", 1)] == (7.0, 7.0)  # the class's median, not a scale
    assert pm.block_bytes == {"fp32": (500, 500), "int8": (150, 150)}  # block artifact sizes
    # Losses relative to fp32's accuracy, per block as measured alone; a block above fp32 costs 0.
    assert abs(pm.block_loss["int8"][0] - 0.005 / 0.97) < 1e-12 and pm.block_loss["int8"][1] == 0.0
    assert pm.estimated_loss == frozenset()
    assert abs(pm.variants["int8"].quality - 0.96 / 0.97) < 1e-12 and pm.variants["fp32"].quality == 1.0


def test_missing_block_accuracy_is_estimated_and_said_so() -> None:
    pm = planner_model(model(accuracy=False))
    assert pm is not None
    assert pm.estimated_loss == frozenset({"int8"})
    loss = 1.0 - 0.96 / 0.97
    assert abs(sum(pm.block_loss["int8"]) - loss) < 1e-12  # the variant's loss, spread over the blocks


def test_a_model_without_profiles_is_not_plannable() -> None:
    assert planner_model(Model(name="m", variants=model().variants)) is None


POLICIES = {
    "p.yaml": """
apiVersion: edgefleet.io/v1alpha1
kind: DeviceGroup
metadata: {name: phones}
spec: {selector: {matchLabels: {region: eu}}}
---
apiVersion: edgefleet.io/v1alpha1
kind: ComputePool
metadata: {name: edge}
spec:
  tier: edge
  hardwareClass: edge-npu
  nodes: {selector: {matchLabels: {role: edge}}}
  clients: {selector: {matchLabels: {region: eu}}}
  slotsPerNode: 3
  defaultLink: {bandwidthMbps: 40, rttMs: 7}
---
apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {name: dep}
spec:
  model: m
  group: phones
  objectives: {latency: {maxMs: 30}, minAccuracy: 0.98}
  partitioning: {edgePools: [edge]}
  batching: {maxBatchSize: 8, maxQueueDelayMs: 2}
---
apiVersion: edgefleet.io/v1alpha1
kind: HardwareClass
metadata: {name: phone-cpu}
spec: {latencyScale: {int8: 9.0}, memoryBytes: 1Gi}
"""
}


def device(device_id: str, klass: str, **labels: str) -> Device:
    return Device(device_id, HardwareProfile(klass, memory_bytes=2**30, labels=labels))


def test_policies_resolve_against_the_fleet() -> None:
    policies = load_policy_texts(POLICIES)
    devices = [
        device("p1", "phone-cpu", region="eu"),
        device("p2", "phone-cpu", region="us"),
        # An edge node in the region: it serves the pool, so it is not planned as a client.
        dataclasses.replace(device("e1", "edge-npu", region="eu", role="edge"), endpoint="127.0.0.1:5000"),
    ]
    data = plan_input(policies, devices, {"m": model()})
    (dep,) = data.deployments
    assert dep.device_ids == ("p1",)
    assert (dep.slo_ms, dep.percentile, dep.min_quality) == (30.0, 95.0, 0.98)
    assert dep.batching is not None and dep.batching.max_batch_size == 8
    assert dep.edge_pools == ("edge",) and dep.partitioning
    (pool,) = data.pools
    assert pool.tier is Tier.EDGE and pool.nodes == ("e1",) and pool.slots_per_node == 3
    assert pool.clients == frozenset({"p1", "e1"})
    assert {d.id for d in data.devices} == {"p1", "p2"}
    phone = data.hardware["phone-cpu"]
    assert (
        phone.latency_scale["int8"] == 9.0 and phone.latency_scale["fp32"] == 2.5
    )  # override, field by field
    assert phone.memory_bytes == 2**30 and phone.source == "policy:phone-cpu"
    assert set(data.models) == {"m"}


def test_call_overheads_reach_the_planner_model_by_class_and_batch() -> None:
    m = dataclasses.replace(
        model(),
        call_overhead=(CallOverhead(1, 0.02), CallOverhead(32, 0.05)),
        class_call_overhead=(
            ClassCallOverhead("phone-cpu", 1, 0.3, devices=4),
            ClassCallOverhead("edge-npu", 1, 0.9, devices=0),  # nobody measured it: not used
        ),
    )
    pm = planner_model(m)
    assert pm is not None
    assert pm.call_overhead_ms == {(HOST, 1): 0.02, (HOST, 32): 0.05, ("phone-cpu", 1): 0.3}
    bare = planner_model(model())
    assert bare is not None and bare.call_overhead_ms == {}


def test_a_hardware_class_policy_restating_the_catalog_changes_nothing() -> None:
    text = """
apiVersion: edgefleet.io/v1alpha1
kind: HardwareClass
metadata: {name: edge-npu}
spec: {latencyScale: {int8: 0.15}}
"""
    (spec,) = hardware_classes(load_policy_texts({"h.yaml": text})).values()
    assert spec.batch_scale["int8"] == 0.05 and spec.latency_scale["int8"] == 0.15


def test_the_current_edge_node_is_passed_through() -> None:
    policies = load_policy_texts(POLICIES)
    key = ConfigKey(Pattern.DEVICE_EDGE, (1,), ("fp32", "fp32"), "edge", "")
    data = plan_input(
        policies,
        [device("p1", "phone-cpu", region="eu")],
        {"m": model()},
        current={"p1": key},
        current_edge_node={"p1": "e1"},
    )
    assert data.current == {"p1": key} and data.current_edge_node == {"p1": "e1"}


def test_an_edge_pools_path_to_the_cloud_is_what_its_nodes_measured() -> None:
    text = {
        **POLICIES,
        "cloud.yaml": """
apiVersion: edgefleet.io/v1alpha1
kind: ComputePool
metadata: {name: gpu}
spec:
  tier: cloud
  hardwareClass: cloud-gpu
  nodes: {selector: {matchLabels: {role: gpu}}}
  defaultLink: {bandwidthMbps: 100, rttMs: 40}
""",
    }
    policies = load_policy_texts(text)
    edge = [
        dataclasses.replace(
            device(f"e{i}", "edge-npu", region="eu", role="edge"), endpoint=f"127.0.0.1:{5000 + i}"
        )
        for i in (1, 2, 3)
    ]
    measured = {
        "e1": {"gpu": Link(100.0, 4.0, 6.0)},
        "e2": {"gpu": Link(100.0, 5.0, 9.0)},
        "e3": {"gpu": Link(100.0, 30.0, 50.0)},
        "p1": {"edge": Link(40.0, 2.5, 3.0)},  # a phone's own measured link stays the phone's
    }
    data = plan_input(
        policies, [device("p1", "phone-cpu", region="eu"), *edge], {"m": model()}, links=measured
    )
    pools = {p.name: p for p in data.pools}
    assert pools["edge"].cloud_link == Link(100.0, 5.0, 9.0)  # the median over the nodes
    assert next(d for d in data.devices if d.id == "p1").links == {"edge": Link(40.0, 2.5, 3.0)}
    # No node measured it: the policy's cloudLink (its default here) stands.
    data = plan_input(policies, [device("p1", "phone-cpu", region="eu"), *edge], {"m": model()})
    told = policies.compute_pools["edge"].spec.cloud_link
    assert told is not None
    assert {p.name: p for p in data.pools}["edge"].cloud_link == Link(told.bandwidth_mbps, told.rtt_ms)
