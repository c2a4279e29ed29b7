"""fleet-agent's command-line parsing of links (bad input: exit 2 with the flag named)."""

from __future__ import annotations

import pytest

from agent.cli import _advertise, _keepalive, _links
from common.errors import InvalidArgument
from common.types import LinkMeasurement


def test_links_parse() -> None:
    assert _links(["eu-edge=50/8", "gpu-central=20/60/95.5"]) == (
        LinkMeasurement("eu-edge", 50.0, 8.0, 0.0),
        LinkMeasurement("gpu-central", 20.0, 60.0, 95.5),
    )


@pytest.mark.parametrize(
    "spec",
    [
        "eu-edge",
        "eu-edge=50",
        "eu-edge=fast/8",
        "=50/8",
        "eu-edge=0/8",
        "eu-edge=50/-1",
        "Bad Pool=1/1",
        "e=1/2/3/4",
        "e=nan/1",
    ],
)
def test_bad_links_are_refused_by_flag(spec: str) -> None:
    with pytest.raises(InvalidArgument, match=r"--link|pool"):
        _links([spec])


def test_a_pool_given_twice_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="twice"):
        _links(["e=1/1", "e=2/2"])


def test_advertise_is_checked_as_an_address() -> None:
    assert _advertise("") == ""
    assert _advertise("10.0.0.7:7001") == "10.0.0.7:7001"
    for bad in ("10.0.0.7", "host:0", "host:99999", ":7001"):
        with pytest.raises(InvalidArgument, match="--advertise"):
            _advertise(bad)


def test_outbox_flags_are_checked() -> None:
    from agent.cli import _choice, _outbox_budget
    from agent.outbox import DropPolicy

    budget = _outbox_budget(32, "36h", "reject-newest")
    assert (budget.max_bytes, budget.max_age_s, budget.policy) == (
        32 * 2**20,
        36 * 3600.0,
        DropPolicy.REJECT_NEWEST,
    )
    with pytest.raises(InvalidArgument, match="--outbox-max-mb"):
        _outbox_budget(0.01, "7d", "drop-oldest")
    with pytest.raises(InvalidArgument, match="--outbox-policy 'keep-all'"):
        _outbox_budget(32, "7d", "keep-all")
    with pytest.raises(InvalidArgument, match="duration"):
        _outbox_budget(32, "a week", "drop-oldest")
    with pytest.raises(InvalidArgument, match="--outbox-sync"):
        _choice("--outbox-sync", "always", ("normal", "full"))


def test_keepalive_is_a_bounded_duration() -> None:
    assert _keepalive("2s") == 2.0 and _keepalive("1m") == 60.0
    for bad in ("0s", "2h", "soon"):
        with pytest.raises(InvalidArgument):
            _keepalive(bad)
