"""Label selectors follow Kubernetes semantics; group and pool membership build on them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from common.types import Device, HardwareProfile
from controller.policy import (
    LabelSelector,
    LabelSelectorRequirement,
    can_reach,
    group_members,
    load_policy_texts,
    matches,
    pool_nodes,
)
from tests.policy.helpers import valid_files

KEYS = ("a", "b", "edgefleet.io/region")
VALUES = ("x", "y", "z")

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
values_st = st.lists(st.sampled_from(VALUES), min_size=1, max_size=3, unique=True).map(tuple)


@st.composite
def requirements(draw: st.DrawFn) -> LabelSelectorRequirement:
    op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
    values = draw(values_st) if op in ("In", "NotIn") else ()
    return LabelSelectorRequirement(key=draw(st.sampled_from(KEYS)), operator=op, values=values)


selectors_st = st.builds(
    LabelSelector,
    match_labels=st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2),
    match_expressions=st.lists(requirements(), max_size=3).map(tuple),
)


@given(labels_st)
def test_empty_selector_matches_everything(labels: dict[str, str]) -> None:
    assert matches(LabelSelector(), labels)


@given(labels_st, st.sampled_from(KEYS), st.sampled_from(VALUES))
def test_match_labels_is_in_with_one_value(labels: dict[str, str], key: str, value: str) -> None:
    by_labels = LabelSelector(match_labels={key: value})
    by_expression = LabelSelector(
        match_expressions=(LabelSelectorRequirement(key=key, operator="In", values=(value,)),)
    )
    assert matches(by_labels, labels) == matches(by_expression, labels) == (labels.get(key) == value)


@given(labels_st, st.sampled_from(KEYS), values_st)
def test_notin_is_the_negation_of_in_and_holds_for_an_unset_label(
    labels: dict[str, str], key: str, values: tuple[str, ...]
) -> None:
    def sel(op: str) -> LabelSelector:
        return LabelSelector(
            match_expressions=(LabelSelectorRequirement(key=key, operator=op, values=values),)
        )

    assert matches(sel("NotIn"), labels) == (not matches(sel("In"), labels))
    if key not in labels:
        assert matches(sel("NotIn"), labels) and not matches(sel("In"), labels)


@given(labels_st, st.sampled_from(KEYS))
def test_does_not_exist_is_the_negation_of_exists(labels: dict[str, str], key: str) -> None:
    def sel(op: str) -> LabelSelector:
        return LabelSelector(match_expressions=(LabelSelectorRequirement(key=key, operator=op),))

    assert matches(sel("Exists"), labels) == (key in labels) != matches(sel("DoesNotExist"), labels)


@given(selectors_st, labels_st)
def test_a_selector_is_the_conjunction_of_its_parts(selector: LabelSelector, labels: dict[str, str]) -> None:
    parts = [LabelSelector(match_labels={k: v}) for k, v in selector.match_labels.items()] + [
        LabelSelector(match_expressions=(r,)) for r in selector.match_expressions
    ]
    assert matches(selector, labels) == all(matches(p, labels) for p in parts)


@given(selectors_st, labels_st, st.sampled_from(VALUES))
def test_labels_the_selector_does_not_mention_do_not_matter(
    selector: LabelSelector, labels: dict[str, str], value: str
) -> None:
    assert matches(selector, labels) == matches(selector, {**labels, "unrelated/key": value})


def _device(device_id: str, hardware_class: str, **labels: str) -> Device:
    return Device(
        id=device_id,
        hardware=HardwareProfile(hardware_class=hardware_class, labels=labels),
    )


def test_group_members_need_the_class_and_the_labels() -> None:
    ps = load_policy_texts(valid_files())
    devices = [
        _device("p1", "phone-cpu", region="eu"),
        _device("p2", "phone-cpu", region="us"),
        _device("p3", "edge-npu", region="eu"),
        _device("p0", "phone-cpu", region="eu", extra="1"),
    ]
    assert [d.id for d in group_members(ps.device_groups["eu-phones"], devices)] == ["p1", "p0"]


def test_pool_nodes_and_clients() -> None:
    ps = load_policy_texts(valid_files())
    devices = [
        _device("e1", "edge-npu", pool="eu-edge"),
        _device("e2", "edge-npu", pool="us-edge"),
        _device("gpu-1", "cloud-gpu"),
        _device("p1", "phone-cpu", region="eu"),
        _device("p2", "phone-cpu", region="us"),
    ]
    edge, cloud = ps.compute_pools["eu-edge"], ps.compute_pools["gpus"]
    assert [d.id for d in pool_nodes(edge, devices)] == ["e1"]
    assert [d.id for d in pool_nodes(cloud, devices)] == ["gpu-1"]
    assert [d.id for d in devices if can_reach(edge, d)] == ["p1"]
    assert all(can_reach(cloud, d) for d in devices)  # a cloud pool without clients serves everyone
