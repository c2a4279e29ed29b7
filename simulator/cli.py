"""fleet-sim: the fleet simulator (its own issue builds it; until then it says so)."""

from __future__ import annotations

import sys


def main() -> None:
    print("fleet-sim: not yet implemented — see the simulator issue", file=sys.stderr)
    sys.exit(2)
