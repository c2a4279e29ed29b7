"""Field checks shared by the decoders: each raises ``InvalidArgument`` whose message starts with
the field path (``_fail``); over-long peer text is cut to ``MAX_TEXT_CHARS`` (``_text``)."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import NoReturn, TypeVar

from google.protobuf.message import Message as _PbMessage

from common.errors import InvalidArgument
from common.limits import MAX_PROFILE_BATCH, MAX_TEXT_CHARS
from common.types import HARDWARE_CLASS_RE, NAME_RE

_HEX = frozenset("0123456789abcdef")

_E = TypeVar("_E")


# --- validation helpers ------------------------------------------------------------------------


def _fail(path: str, problem: str) -> NoReturn:
    raise InvalidArgument(f"{path}: {problem}")


def _at(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _text(value: str) -> str:
    return value[:MAX_TEXT_CHARS]


def _show(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "...")


def _nonempty(path: str, value: str) -> str:
    if not value:
        _fail(path, "empty")
    if len(value) > MAX_TEXT_CHARS:
        _fail(path, f"too long ({len(value)} characters, at most {MAX_TEXT_CHARS})")
    return value


def _name(path: str, value: str, *, required: bool = True) -> str:
    """A device id, model name or variant (``NAME_RE``); ``required=False`` also accepts ''."""
    if not value:
        if required:
            _fail(path, "empty")
        return value
    if len(value) > MAX_NAME_CHARS or not _is_name(value):
        _fail(
            path,
            f"invalid name {_show(value)}: use 1-128 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit",
        )
    return value


#: The longest name ``NAME_RE`` accepts: a longer value is refused before it reaches the cache.
MAX_NAME_CHARS = 128


# The same few ids and hashes arrive on every request a serving agent answers: what was checked once
# is looked up. Bounded twice over: at most 4096 values, each of at most the length that can pass
# (callers check the length first), so a peer sending ever new values holds at most ~1 MiB here.
@functools.lru_cache(maxsize=4096)
def _is_name(value: str) -> bool:
    return NAME_RE.fullmatch(value) is not None


@functools.lru_cache(maxsize=4096)
def _is_sha256(value: str) -> bool:
    return len(value) == 64 and _HEX.issuperset(value)


def _hardware_class(path: str, value: str, *, required: bool = True) -> str:
    if not value:
        if required:
            _fail(path, "empty")
        return value
    if not HARDWARE_CLASS_RE.fullmatch(value):
        _fail(path, f"invalid hardware class {_show(value)}: use a lowercase DNS label")
    return value


def _sha256(path: str, value: str, *, required: bool = True) -> str:
    if not value:
        if required:
            _fail(path, "empty")
        return value
    if len(value) != 64 or not _is_sha256(value):
        _fail(path, f"{_show(value)} is not a lowercase hex sha256")
    return value


def _latency(path: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        _fail(path, f"{value!r} is not a finite non-negative number")
    return value


def _finite(path: str, value: float) -> float:
    if not math.isfinite(value):
        _fail(path, f"{value} is not a finite number")
    return value


def _enum(path: str, value: int, table: Mapping[int, _E]) -> _E:
    """A required enum: UNSPECIFIED (0) and numbers this version does not know are errors."""
    if value == 0:
        _fail(path, "unspecified")
    found = table.get(value)
    if found is None:
        _fail(path, f"unknown value {value}")
    return found


def _required_message(pb: _PbMessage, field: str, path: str) -> None:
    if not pb.HasField(field):
        _fail(_at(path, field), "missing")


def _batch_size(path: str, value: int) -> int:
    if not 1 <= value <= MAX_PROFILE_BATCH:
        _fail(path, f"{value} is not within 1..{MAX_PROFILE_BATCH}")
    return value
