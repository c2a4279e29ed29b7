"""fleetctl commands on policy files. ``validate`` works offline: it reads the files, reports every
problem at once (one line each, ``file:line:column: field.path: message``, the way compilers do, so
editors and CI logs link to it) and exits 2 when there is any, like every bad-input error of fleetctl.

``plan``, ``diff`` and ``apply`` validate the same way first (nothing is sent while a file is wrong),
then send the files to the controller, which checks them against what it knows (models, hardware
classes), plans the fleet and — for ``apply`` only — records the policies with who applied them and
the Git commit they came from, and sets every planned device's assignment. ``history`` lists applies.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from common.cli_errors import exit_for
from common.errors import EdgefleetError, InvalidArgument, NotFound
from common.limits import MAX_POLICY_HISTORY
from common.types import PolicyFile
from controller.cli import plan_render, render
from controller.client import AdminClient
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


ControllerOpt = Annotated[
    str, typer.Option("--controller", envvar="EDGEFLEET_CONTROLLER", help="Controller address HOST:PORT.")
]
DEFAULT_CONTROLLER = "127.0.0.1:7443"


def register(app: typer.Typer) -> None:
    """Add the policy commands to fleetctl."""
    app.command("validate")(validate)
    app.command("plan")(plan)
    app.command("diff")(diff)
    app.command("apply")(apply)
    app.command("history")(history)


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


# --- plan, diff, apply, history (talk to the controller) -----------------------------------------


def _files(paths: list[Path] | None) -> tuple[list[PolicyFile], list[Path]]:
    """The policy files under ``paths``, validated here first: every problem is printed with its
    location and the command exits 2 before anything is sent."""
    if not paths:
        raise exit_for(InvalidArgument("name policy files or directories with -f"))
    load = read_policies(paths)
    if not load.ok:
        for e in load.errors:
            typer.echo(str(e))
        n = len(load.errors)
        err.print(f"{n} error{'s' if n != 1 else ''}; nothing was sent to the controller", highlight=False)
        raise typer.Exit(2)
    files = [PolicyFile(str(f), Path(f).read_text(encoding="utf-8")) for f in load.files]
    return files, [Path(f) for f in load.files]


def _controller(address: str) -> AdminClient:
    return AdminClient(address or DEFAULT_CONTROLLER)


def plan(
    files: FilesOpt = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="Output format.")] = Output.table,
    explain: Annotated[
        list[str] | None, typer.Option("--explain", help="Explain this device's plan and its alternatives.")
    ] = None,
    controller: ControllerOpt = "",
) -> None:
    """Dry run: what these policies would make every device run (changes nothing)."""
    policy_files, _ = _files(files)
    try:
        with _controller(controller) as client:
            doc = client.plan_policies(policy_files, explain=explain or (), devices=True)
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    if output is Output.json:
        print(render.dump(doc, "json"))
        return
    if explain:
        for device_id in explain:
            if not plan_render.explain(doc, device_id, out):
                raise exit_for(NotFound(f"device {device_id!r} is not in the plan (no such device?)"))
        return
    plan_render.plan_tables(doc, out)


def diff(
    files: FilesOpt = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="Output format.")] = Output.table,
    controller: ControllerOpt = "",
) -> None:
    """What applying these policies would change: policy documents, and each device's assignment."""
    policy_files, _ = _files(files)
    try:
        with _controller(controller) as client:
            policy_diff, changes, summary = client.diff_policies(policy_files)
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    if output is Output.json:
        doc = {"policies": policy_diff, "assignments": plan_render.changes_doc(changes), "plan": summary}
        print(render.dump(doc, "json"))
        return
    lines = plan_render.policy_diff_lines(policy_diff)
    out.print("\n".join(lines) if lines else "policies: no change", highlight=False, markup=False)
    if changes:
        out.print(f"{len(changes)} device assignment{'s' if len(changes) != 1 else ''} would change:")
        out.print(plan_render.changes_table(changes))
    else:
        out.print("assignments: no change")
    out.print(plan_render.summary_line(summary), highlight=False)


def apply(
    files: FilesOpt = None,
    message: Annotated[str, typer.Option("--message", "-m", help="Why (kept in the history).")] = "",
    output: Annotated[Output, typer.Option("--output", "-o", help="Output format.")] = Output.table,
    controller: ControllerOpt = "",
) -> None:
    """Apply policies: record them (who, when, Git commit) and set every planned device's assignment,
    all or nothing. Applying the same files again changes nothing."""
    policy_files, paths = _files(files)
    commit, dirty = git_state(paths)
    try:
        with _controller(controller) as client:
            record, changed, changes = client.apply_policies(
                policy_files,
                applied_by=who(),
                git_commit=commit,
                git_dirty=dirty,
                source=" ".join(str(f) for f in files or ()),
                message=message,
            )
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    if output is Output.json:
        doc = {
            "changed": changed,
            "apply": plan_render.apply_doc(record),
            "assignments": plan_render.changes_doc(changes),
        }
        print(render.dump(doc, "json"))
        return
    if not changed:
        out.print(
            f"unchanged: these policies are already applied (apply {record.id}, digest {record.digest[:12]})"
        )
        return
    where = f" from {commit[:12]}{' (dirty tree)' if dirty else ''}" if commit else " (not in a Git checkout)"
    out.print(
        f"applied (apply {record.id}{where}): {record.devices_changed} device assignment"
        f"{'s' if record.devices_changed != 1 else ''} changed",
        highlight=False,
    )
    if changes:
        out.print(plan_render.changes_table(changes))


def history(
    limit: Annotated[int, typer.Option(help="How many applies to list (newest first).")] = 20,
    output: Annotated[Output, typer.Option("--output", "-o", help="Output format.")] = Output.table,
    controller: ControllerOpt = "",
) -> None:
    """Past applies, newest first: who, when, from which commit, what changed."""
    if not 1 <= limit <= MAX_POLICY_HISTORY:
        raise exit_for(InvalidArgument(f"--limit must be 1..{MAX_POLICY_HISTORY}, got {limit}"))
    try:
        with _controller(controller) as client:
            applies = client.list_policy_applies(limit=limit)
    except EdgefleetError as exc:
        raise exit_for(exc) from None
    if output is Output.json:
        print(render.dump([plan_render.apply_doc(a) for a in applies], "json"))
        return
    if not applies:
        out.print("no policies applied yet")
        return
    out.print(plan_render.history_table(applies))


def who() -> str:
    """user@host, as the history records who applied."""
    user = os.environ.get("EDGEFLEET_USER") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


def git_state(paths: list[Path]) -> tuple[str, bool]:
    """(HEAD commit, whether the policy files differ from it) of the Git checkout holding ``paths``;
    ('', False) outside one. A dirty tree is recorded, not refused: the history says so."""
    if not paths:
        return "", False
    where = paths[0].resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if head.returncode != 0:
            return "", False
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", *(str(p.resolve()) for p in paths)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "", False
    return head.stdout.strip(), bool(status.stdout.strip())
