"""common.fastinit.slot_init: the same constructor as dataclasses' own, only faster."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from typing import Any

import numpy as np
import pytest

from agent.serving.batcher import BatchResult
from common.fastinit import slot_init
from common.types import DataType, HopTiming, RunSegmentRequest, RunSegmentResponse, Tensor

pytestmark = pytest.mark.timeout(10)

HOT = (Tensor, HopTiming, RunSegmentRequest, RunSegmentResponse, BatchResult)


@dataclasses.dataclass(frozen=True, slots=True)
class Plain:
    name: str
    shape: tuple[int, ...]
    size: int = 1
    label: str = ""


Quick = slot_init(dataclasses.make_dataclass("Quick", [("name", str), ("shape", tuple), ("size", int, 1), ("label", str, "")], frozen=True, slots=True))  # fmt: skip


@pytest.mark.parametrize("cls", HOT, ids=lambda c: c.__name__)
def test_the_hot_types_keep_the_signature_dataclasses_gives_them(cls: type) -> None:
    params = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        expected = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        assert p.default == expected, f.name
        assert p.annotation == f.type, f.name  # (as strings: the modules use postponed annotations)
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (("x", (1, 2)), {}),
        (("x", (1, 2), 3), {}),
        (("x",), {"shape": (4,), "label": "l"}),
        ((), {"label": "l", "size": 7, "shape": (), "name": "y"}),
    ],
)
def test_it_builds_what_the_dataclass_init_builds(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    quick, plain = Quick(*args, **kwargs), Plain(*args, **kwargs)
    assert dataclasses.asdict(quick) == dataclasses.asdict(plain)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("x",), {}, "missing 1 required positional argument: 'shape'"),
        (("x", (), 1, "", "extra"), {}, "takes from 3 to 5 positional arguments"),
        (("x", ()), {"colour": 1}, "unexpected keyword argument 'colour'"),
        (("x", ()), {"name": "y"}, "multiple values for argument 'name'"),
    ],
)
def test_a_wrong_call_fails_as_the_dataclass_init_does(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        Quick(*args, **kwargs)
    with pytest.raises(TypeError, match=message):
        Plain(*args, **kwargs)


def test_the_rest_of_the_dataclass_is_untouched() -> None:
    t = Tensor("x", DataType.FLOAT32, (1, 2), b"\0" * 8)
    assert t.encoding == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "y"  # type: ignore[misc]
    same = Tensor(name="x", dtype=DataType.FLOAT32, shape=(1, 2), data=b"\0" * 8)
    assert t == same and hash(t) == hash(same)
    assert repr(t).startswith("Tensor(name='x'")
    assert pickle.loads(pickle.dumps(t)) == t
    hop = HopTiming("edge-1", "edge", queue_ms=1.5)
    assert (hop.compute_ms, hop.transfer_ms, hop.batch_size) == (0.0, 0.0, 1)
    result = BatchResult({"y": np.zeros(1)}, 0.1, 0.2, 3, 2)
    assert (result.queue_s, result.compute_s, result.batch_size, result.batch_requests) == (0.1, 0.2, 3, 2)


def test_it_refuses_a_class_it_would_build_wrongly() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class KwOnly:
        a: int = dataclasses.field(default=0, kw_only=True)

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True, slots=True)
    class Child(Plain):  # the parent's fields are not this class's own slots
        extra: int = 0

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        b: dataclasses.InitVar[int] = 0

    for cls, message in [
        (Child, "own, plainly named fields"),
        (WithInitVar, "InitVar"),
        (NoSlots, "needs a @dataclass"),
        (NotFrozen, "needs a @dataclass"),
        (Factory, "plain defaults"),
        (KwOnly, "plain defaults"),
        (PostInit, "__post_init__"),
    ]:
        with pytest.raises(TypeError, match=message):
            slot_init(cls)
