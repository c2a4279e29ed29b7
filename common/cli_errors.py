"""How the command-line programs report a typed error: one line naming what was wrong, and an exit
status scripts can branch on (2: bad input, 1: anything else)."""

from __future__ import annotations

import typer
from rich.console import Console

from common.errors import EdgefleetError, InvalidArgument, TransientError

_err = Console(stderr=True)


def exit_for(exc: EdgefleetError) -> typer.Exit:
    kind = "unavailable" if isinstance(exc, TransientError) else exc.code
    _err.print(f"[red]error[/red] ({kind}): {exc.message}", highlight=False)
    return typer.Exit(2 if isinstance(exc, InvalidArgument) else 1)
