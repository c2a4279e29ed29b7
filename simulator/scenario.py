"""Scenario files: a fleet, the policies it runs, a workload, a timeline of events and assertions.

Validated like policy files (pydantic models, line-numbered errors in YAML terms). Durations are
``90s``/``5m``/``1h`` or plain seconds. ``--devices N`` scales every group marked ``scale: true``
(the default) in proportion, keeping at least one device in each; serving nodes (edge, cloud) are
usually fixed (``scale: false``).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from common.durations import parse_duration
from common.errors import InvalidArgument
from controller.policy.errors import PolicyError
from controller.policy.loader import validate_document


def _seconds(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(parse_duration(value))
        except InvalidArgument as exc:
            raise ValueError(str(exc).removeprefix("invalid duration ")) from None
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0)]
#: An interval something repeats at: zero would spin (and stop the virtual clock).
Interval = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]
Percent = Annotated[float, Field(ge=0, le=100)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Spread(_Model):
    """A number that varies across devices: lognormal around ``median`` (``sigma`` 0: fixed)."""

    median: float = Field(gt=0)
    sigma: float = Field(default=0.0, ge=0, le=3)

    def sample(self, rng: random.Random) -> float:
        return self.median * math.exp(rng.gauss(0.0, self.sigma)) if self.sigma else self.median


def _spread(value: Any) -> Any:
    return {"median": value} if isinstance(value, int | float) and not isinstance(value, bool) else value


SpreadOrNumber = Annotated[Spread, BeforeValidator(_spread)]


class LinkSpec(_Model):
    pool: str = Field(min_length=1)
    bandwidth_mbps: SpreadOrNumber
    rtt_ms: SpreadOrNumber


class GroupSpec(_Model):
    name: str = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    hardware_class: str = Field(min_length=1)
    count: int = Field(ge=0, le=1_000_000)
    scale: bool = True
    labels: dict[str, str] = Field(default_factory=dict)
    links: list[LinkSpec] = Field(default_factory=list)
    #: Inference requests per second per device (Poisson arrivals).
    request_rate: float = Field(default=0.0, ge=0, le=1000)


class Workload(_Model):
    #: 0: a flat rate; 0.5: the rate swings between 50% and 150% of each group's over ``period``.
    diurnal_amplitude: float = Field(default=0.0, ge=0, le=1)
    period: Interval = 86_400.0
    #: Simulated latency = the plan's prediction for the hop x lognormal(0, sigma).
    latency_sigma: float = Field(default=0.15, ge=0, le=2)
    #: This share of devices times its own compute with real onnxruntime (x its class's latency
    #: scale) instead of drawing it; their timings are real, so a run with them does not repeat
    #: to the millisecond.
    real_fraction: float = Field(default=0.0, ge=0, le=1)


class ModelSpec(_Model):
    name: str = Field(min_length=1)
    #: ``digits`` (trained on scikit-learn's bundled digits at setup) or a path to an .onnx file.
    source: str = "digits"
    eval_data: str = ""


class ControllerSpec(_Model):
    heartbeat_interval: Interval = 10.0
    reconcile_interval: Interval = 1.0
    #: Virtual engine: the re-planner's periodic pass (the realtime controller keeps its default, 60 s);
    #: planning 100,000 devices takes seconds of real CPU, so a simulated day wants fewer passes.
    replan_every: Interval = 60.0
    #: Realtime engine: how devices reach the controller.
    transport: Literal["grpc", "mqtt"] = "grpc"
    #: Realtime engine: gRPC channels the devices' streams are multiplexed over.
    channels: int = Field(default=8, ge=1, le=256)
    #: Realtime engine: devices connected per second while the fleet comes up (a ramp, not a storm).
    connect_rate: float = Field(default=500.0, gt=0)


class Target(_Model):
    group: str
    percent: Percent = 100.0


class Cut(Target):
    duration: Interval = Field(alias="for")


class BandwidthDrop(Cut):
    factor: float = Field(gt=0, le=1)


class Restart(_Model):
    down_for: Seconds = 0.0


class Churn(_Model):
    group: str
    count: int = Field(ge=1)


class Event(_Model):
    at: Seconds
    apply: str | None = None
    cut_links: Cut | None = None
    blackhole: Cut | None = None
    drop_bandwidth: BandwidthDrop | None = None
    restart_controller: Restart | None = None
    #: Realtime engine with ``controller.transport: mqtt`` only.
    restart_broker: Restart | None = None
    #: Devices lose their link and reboot while offline; the link comes back after ``for``.
    reboot: Cut | None = None
    join: Churn | None = None
    leave: Churn | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Event:
        set_ = [k for k in _EVENT_KINDS if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"an event has exactly one of {', '.join(_EVENT_KINDS)} (got {len(set_)})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _EVENT_KINDS if getattr(self, k) is not None)

    @property
    def body(self) -> Any:
        return getattr(self, self.kind)


_EVENT_KINDS = (
    "apply",
    "cut_links",
    "blackhole",
    "drop_bandwidth",
    "restart_controller",
    "restart_broker",
    "reboot",
    "join",
    "leave",
)


class Assertion(_Model):
    #: Every policy apply has every device acking its plan within this long.
    converged_within: Seconds | None = None
    records_lost_max: int | None = Field(default=None, ge=0)
    records_duplicated_max: int | None = Field(default=None, ge=0)
    #: Fraction of answered requests within their deployment's SLO.
    slo_attainment_min: float | None = Field(default=None, ge=0, le=1)
    #: Fractions of all requests.
    degraded_max: float | None = Field(default=None, ge=0, le=1)
    failed_max: float | None = Field(default=None, ge=0, le=1)
    #: Every device is connected at the end.
    all_connected: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Assertion:
        set_ = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(set_) != 1:
            fields = ", ".join(type(self).model_fields)
            raise ValueError(f"an assertion has exactly one of {fields} (got {len(set_)})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    @property
    def value(self) -> Any:
        return getattr(self, self.kind)


class Scenario(_Model):
    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 1
    duration: Interval
    #: How often the report samples the fleet (connected, converged, answered).
    sample_every: Interval = 5.0
    model: ModelSpec
    controller: ControllerSpec = Field(default_factory=ControllerSpec)
    workload: Workload = Field(default_factory=Workload)
    fleet: list[GroupSpec] = Field(min_length=1)
    timeline: list[Event] = Field(default_factory=list)
    assertions: list[Assertion] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        names = [g.name for g in self.fleet]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique (got {names})")
        for i, event in enumerate(self.timeline):
            body = event.body
            group = getattr(body, "group", None)
            if group is not None and group not in names:
                raise ValueError(f"timeline[{i}].{event.kind}.group: no group {group!r} (groups: {names})")
            lasts = getattr(body, "duration", 0.0) + getattr(body, "down_for", 0.0)
            if event.at + lasts > self.duration:
                raise ValueError(
                    f"timeline[{i}]: {event.kind} at {event.at:g}s lasting {lasts:g}s ends after the run "
                    f"({self.duration:g}s): every fault must be over before the records are counted"
                )
        return self

    def scaled(self, devices: int | None) -> Scenario:
        """The scenario with its scalable groups resized so the fleet has about ``devices`` devices."""
        if devices is None:
            return self
        fixed = sum(g.count for g in self.fleet if not g.scale)
        scalable = sum(g.count for g in self.fleet if g.scale)
        if scalable == 0 or devices <= fixed:
            raise InvalidArgument(
                f"--devices {devices}: the scenario has {fixed} fixed devices and {scalable} to scale"
            )
        factor = (devices - fixed) / scalable
        fleet = [
            g.model_copy(update={"count": max(1, round(g.count * factor))}) if g.scale else g
            for g in self.fleet
        ]
        return self.model_copy(update={"fleet": fleet})

    @property
    def device_count(self) -> int:
        return sum(g.count for g in self.fleet)


class ScenarioErrors(InvalidArgument):
    code = "invalid_scenario"

    def __init__(self, errors: list[PolicyError]) -> None:
        self.errors = errors
        n = len(errors)
        lines = "\n".join(str(e) for e in errors)
        super().__init__(f"{n} error{'s' if n != 1 else ''} in the scenario:\n{lines}")


def load_scenario(path: Path) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read scenario {path}: {exc}") from None
    scenario, errors = validate_document(str(path), text, Scenario)
    if errors or scenario is None:
        raise ScenarioErrors(errors)
    base = path.parent
    model = scenario.model
    for name, value in (
        ("model.source", model.source if model.source != "digits" else ""),
        ("model.eval_data", model.eval_data),
    ):
        if value and not (base / value).is_file():
            raise InvalidArgument(f"{path}: {name} {value!r}: no such file under {base}")
    for event in scenario.timeline:
        if event.apply is not None and not (base / event.apply).exists():
            raise InvalidArgument(f"{path}: apply {event.apply!r}: no such file or directory under {base}")
    return scenario
