"""What a bad policy file produces: every problem at once, each with where it is.

``PolicyError`` is one problem (file, line, column, field path, message), printed the way compilers
print theirs so editors and CI logs can jump to it. ``PolicyErrors`` carries all of them; it is an
``InvalidArgument`` because the files are wrong, not the controller, so the CLI exits 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from common.errors import InvalidArgument


@dataclass(frozen=True, slots=True, order=True)
class PolicyError:
    """One problem in the policy files. ``line`` and ``column`` are 1-based, 0 when unknown (e.g. a
    file that cannot be read); ``path`` is the field path in YAML names (``spec.objectives.latency.maxMs``,
    ``spec.precisions.device[1]``), empty for a problem with the file itself."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def to_doc(self) -> dict[str, str | int]:
        """The stable JSON shape (``fleetctl validate -o json``)."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
        }


class PolicyErrors(InvalidArgument):
    """Policy files that cannot be used, with every problem found (sorted by file and position)."""

    code = "invalid_policy"

    def __init__(self, errors: Iterable[PolicyError]) -> None:
        self.errors: tuple[PolicyError, ...] = tuple(sorted(set(errors)))
        n = len(self.errors)
        lines = "\n".join(str(e) for e in self.errors)
        super().__init__(f"{n} error{'s' if n != 1 else ''} in policy files:\n{lines}")
