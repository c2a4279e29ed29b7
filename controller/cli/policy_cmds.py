"""fleetctl commands on policy files. ``validate`` works offline: it reads the files, reports every
problem at once (one line each, ``file:line:column: field.path: message``, the way compilers do, so
editors and CI logs link to it) and exits 2 when there is any, like every bad-input error of fleetctl.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from common.cli_errors import exit_for
from common.errors import InvalidArgument
from controller.cli import render
from controller.policy import PolicyLoad, read_policies, write_policy_schema

out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

FilesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--file",
        "-f",
        help="A policy file, or a directory read recursively (*.yaml, *.yml); repeat for more.",
    ),
]


class Output(StrEnum):
    table = "table"
    json = "json"


def register(app: typer.Typer) -> None:
    """Add the policy commands to fleetctl."""
    app.command("validate")(validate)


def validate_doc(load: PolicyLoad) -> dict[str, Any]:
    """The stable JSON shape of ``fleetctl validate -o json``."""
    doc: dict[str, Any] = {
        "ok": load.ok,
        "files": list(load.files),
        "documents": load.documents,
        "errors": [e.to_doc() for e in load.errors],
    }
    if load.ok:
        doc["kinds"] = load.policy_set.kind_counts()
        doc["digest"] = load.policy_set.digest()
    return doc


def validate(
    files: FilesOpt = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="Output format.")] = Output.table,
    write_schema: Annotated[
        Path | None,
        typer.Option(
            "--write-schema",
            help="Write the JSON Schema of policy documents here (for editors; policies/schema.json).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Check policy files without a controller: every error at once, with file, line and field path."""
    if write_schema is not None:
        try:
            write_policy_schema(write_schema)
        except OSError as exc:
            err.print(f"[red]error[/red]: cannot write {write_schema}: {exc}", highlight=False)
            raise typer.Exit(1) from None
        err.print(f"wrote {write_schema}", highlight=False)
        if not files:
            return
    if not files:
        raise exit_for(InvalidArgument("name policy files or directories with -f (or give --write-schema)"))

    load = read_policies(files)
    if output is Output.json:
        print(render.dump(validate_doc(load), "json"))
    elif load.ok:
        counts = ", ".join(f"{n} {kind}" for kind, n in load.policy_set.kind_counts().items())
        n, nfiles = load.documents, len(load.files)
        out.print(
            f"{n} document{'s' if n != 1 else ''} OK ({counts or 'none'}) in {nfiles} "
            f"file{'s' if nfiles != 1 else ''}; digest {load.policy_set.digest()[:12]}",
            highlight=False,
            markup=False,
        )
    else:
        for e in load.errors:
            typer.echo(str(e))  # plain: no wrapping, no markup ([1] in paths is not a style)
        n = len(load.errors)
        err.print(f"{n} error{'s' if n != 1 else ''}; nothing is valid until all are fixed", highlight=False)
    if not load.ok:
        raise typer.Exit(2)
