"""Human durations for CLI flags: 90s, 30m, 24h, 7d (and combinations like 1h30m)."""

from __future__ import annotations

import re

from common.errors import InvalidArgument

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+)([smhd])")


def parse_duration(text: str) -> int:
    """Seconds in ``text``; InvalidArgument naming the text if it is not a duration."""
    value = text.strip().lower()
    if value.isdigit():
        return int(value)
    parts = _PART.findall(value)
    if not value or "".join(n + u for n, u in parts) != value:
        raise InvalidArgument(
            f"invalid duration {text!r}: use a number with s, m, h or d, e.g. 90s, 30m, 24h, 7d"
        )
    return sum(int(n) * _UNITS[u] for n, u in parts)
