"""Reading policy files: every error in every file at once, each at its file, line and column.

ruamel.yaml's round-trip loader keeps the position of every key and list item. The loader turns each
document into plain Python data plus a table from field path to position, validates the plain data
with the kind's pydantic model (by alias only: files spell fields the way the schema does), and maps
each pydantic error location back through that table. A missing field is reported where its parent
is. Then come the checks across fields and documents (``controller.policy.checks``). Nothing stops at
the first error; a file with a YAML syntax error contributes its documents up to that error.
"""

from __future__ import annotations

import datetime
import difflib
import logging
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from controller.policy.checks import check_consistency, check_document, deployment_references
from controller.policy.errors import PolicyError, PolicyErrors
from controller.policy.models import API_VERSION, KINDS, PolicyDocument
from controller.policy.policyset import DocumentLocation, Loc, PolicyKey, PolicySet, format_path

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

POLICY_SUFFIXES = (".yaml", ".yml")
_KNOWN_KINDS = ", ".join(KINDS)


@dataclass(frozen=True)
class PolicyLoad:
    """The result of reading policy files: the documents that validated, and every error.

    When ``errors`` is not empty, ``policy_set`` holds only what could be read and must not be
    applied; ``raise_for_errors`` makes that impossible to forget."""

    policy_set: PolicySet
    errors: tuple[PolicyError, ...] = ()
    files: tuple[str, ...] = ()
    documents: int = 0
    """Non-empty YAML documents read, valid or not."""

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> PolicySet:
        if self.errors:
            raise PolicyErrors(self.errors)
        return self.policy_set


def load_policies(paths: Iterable[str | os.PathLike[str]]) -> PolicySet:
    """The policy set in these files and directories; ``PolicyErrors`` with every problem otherwise."""
    return read_policies(paths).raise_for_errors()


def load_policy_texts(texts: Mapping[str, str]) -> PolicySet:
    """Like ``load_policies`` for contents already in memory (file name -> YAML text), e.g. read from
    a Git commit."""
    return read_policy_texts(texts).raise_for_errors()


def read_policies(paths: Iterable[str | os.PathLike[str]]) -> PolicyLoad:
    """Read files and directories (recursively: ``*.yaml``, ``*.yml``, sorted, hidden ones skipped)
    and return the valid documents alongside every error."""
    files, errors = policy_files(paths)
    texts: dict[str, str] = {}
    for path in files:
        try:
            texts[str(path)] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(PolicyError(str(path), 0, 0, "", f"cannot read: {exc}"))
    load = read_policy_texts(texts)
    return PolicyLoad(
        policy_set=load.policy_set,
        errors=tuple(sorted({*load.errors, *errors})),
        files=tuple(str(p) for p in files),
        documents=load.documents,
    )


def policy_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[PolicyError]]:
    """The files ``paths`` name: files as given, directories searched recursively; each file once."""
    found: list[Path] = []
    errors: list[PolicyError] = []
    seen: set[Path] = set()
    for p in paths:
        path = Path(p)
        if path.is_dir():
            here = sorted(
                f
                for f in path.rglob("*")
                if f.suffix in POLICY_SUFFIXES
                and f.is_file()
                and not any(part.startswith(".") for part in f.relative_to(path).parts)
            )
            if not here:
                errors.append(
                    PolicyError(str(path), 0, 0, "", "no policy files (*.yaml, *.yml) in this directory")
                )
        elif path.is_file():
            here = [path]
        else:
            errors.append(PolicyError(str(path), 0, 0, "", "no such file or directory"))
            continue
        for f in here:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                found.append(f)
    return found, errors


# --- from YAML to plain data and positions -----------------------------------------------------


@dataclass
class _RawDocument:
    file: str
    index: int  # 1-based, within its file
    data: Any
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)


def _plain(node: Any, loc: Loc, positions: dict[Loc, tuple[int, int]]) -> Any:
    """Plain dict/list/str/int/float/bool/None from ruamel's round-trip types, recording the 1-based
    position of every key and list item under its path."""
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            k = _plain(key, loc, {})
            try:
                line, col = node.lc.key(key)
                positions[(*loc, k)] = (line + 1, col + 1)
            except (KeyError, TypeError):  # a key merged in from an anchor has no position of its own
                pass
            try:
                out[k] = _plain(value, (*loc, k), positions)
            except TypeError:  # an unhashable key (a mapping used as a key): keep its text
                out[str(k)] = _plain(value, (*loc, str(k)), positions)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            try:
                line, col = node.lc.item(i)
                positions[(*loc, i)] = (line + 1, col + 1)
            except (KeyError, TypeError, IndexError):
                pass
            items.append(_plain(value, (*loc, i), positions))
        return items
    if isinstance(node, bool) or type(node).__name__ == "ScalarBoolean":
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node  # None, dates, tagged scalars: the model says what it expected instead


def _parse(file: str, text: str) -> tuple[list[_RawDocument], list[PolicyError]]:
    yaml = YAML(typ="rt")
    docs: list[_RawDocument] = []
    try:
        for index, node in enumerate(yaml.load_all(text), start=1):
            if node is None:  # an empty document (e.g. a trailing ---)
                continue
            doc = _RawDocument(file, index, None)
            if isinstance(node, CommentedMap | CommentedSeq):
                doc.positions[()] = (node.lc.line + 1, node.lc.col + 1)
            doc.data = _plain(node, (), doc.positions)
            docs.append(doc)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem and exc.context_mark is not None:
            message += f" ({exc.context} started at line {exc.context_mark.line + 1})"
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        return docs, [PolicyError(file, line, col, "", f"YAML syntax error: {message}")]
    except YAMLError as exc:
        return docs, [PolicyError(file, 0, 0, "", f"YAML error: {exc}")]
    return docs, []


# --- validation --------------------------------------------------------------------------------


def validate_document(file: str, text: str, model: type[M]) -> tuple[M | None, list[PolicyError]]:
    """One YAML document (not a policy: e.g. a simulator scenario) validated against ``model``, with
    the same line-numbered, YAML-worded errors as policy files."""
    docs, errors = _parse(file, text)
    if errors:
        return None, errors
    if len(docs) != 1 or not isinstance(docs[0].data, dict):
        return None, [PolicyError(file, 1, 1, "", "expected exactly one YAML mapping")]
    doc = docs[0]
    where = DocumentLocation(file, doc.positions)
    try:
        return model.model_validate(doc.data), []
    except ValidationError as exc:
        out = []
        for e in exc.errors():
            line, col = where.at(_loc(e))
            out.append(PolicyError(file, line, col, format_path(_loc(e)), _message(e, model)))
        return None, out


def read_policy_texts(texts: Mapping[str, str]) -> PolicyLoad:
    """Validate policy YAML given as file name -> text (the names appear in the errors)."""
    errors: list[PolicyError] = []
    raw: list[_RawDocument] = []
    for file, text in texts.items():
        docs, syntax = _parse(file, text)
        raw += docs
        errors += syntax

    valid: list[PolicyDocument] = []
    locations: dict[PolicyKey, DocumentLocation] = {}
    first_at: dict[PolicyKey, str] = {}
    invalid: dict[PolicyKey, str | None] = {}
    invalid_deployments: list[tuple[DocumentLocation, dict[str, Any]]] = []
    for doc in raw:
        where = DocumentLocation(doc.file, doc.positions)

        def error(loc: Loc, message: str, where: DocumentLocation = where) -> PolicyError:
            line, col = where.at(loc)
            return PolicyError(where.file, line, col, format_path(loc), message)

        data = doc.data
        if not isinstance(data, dict):
            errors.append(
                error(
                    (),
                    f"document {doc.index} is not a mapping: a policy document has apiVersion, kind, "
                    "metadata and spec",
                )
            )
            continue
        kind = data.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            errors.append(error(("kind",), _kind_problem(data)))
            if data.get("apiVersion") != API_VERSION:
                errors.append(error(("apiVersion",), _api_version_problem(data)))
            continue

        meta = data.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        key = PolicyKey(kind, name) if isinstance(name, str) else None
        if key is not None:
            line, col = where.at(("metadata", "name"))
            here = f"{doc.file}:{line}:{col}"
            if key in first_at:
                errors.append(
                    error(
                        ("metadata", "name"), f"duplicate {kind} {name!r}: first defined at {first_at[key]}"
                    )
                )
                continue
            first_at[key] = here

        model = KINDS[kind]
        try:
            obj = model.model_validate(data, by_alias=True, by_name=False)
        except ValidationError as exc:
            errors += [error(_loc(e), _message(e, model)) for e in exc.errors()]
            if key is not None:
                spec = data.get("spec")
                tier = spec.get("tier") if isinstance(spec, dict) else None
                invalid[key] = tier if tier in ("edge", "cloud") else None
                if kind == "ModelDeployment" and isinstance(spec, dict):
                    invalid_deployments.append((where, spec))
            continue
        errors += [error(f.loc, f.message) for f in check_document(obj)]
        assert key is not None  # the model validated metadata.name as a string
        valid.append(obj)
        locations[key] = where

    policy_set = PolicySet.of(*valid, locations=locations)
    errors += check_consistency(policy_set, invalid=invalid)
    for where, spec in invalid_deployments:
        for f in deployment_references(policy_set, spec, invalid):
            line, col = where.at(f.loc)
            errors.append(PolicyError(where.file, line, col, format_path(f.loc), f.message))
    log.debug(
        "read %d policy documents from %d files: %d valid, %d errors",
        len(raw),
        len(texts),
        len(valid),
        len(errors),
    )
    return PolicyLoad(
        policy_set=policy_set,
        errors=tuple(sorted(set(errors))),
        files=tuple(texts),
        documents=len(raw),
    )


def _kind_problem(data: Mapping[str, Any]) -> str:
    if "kind" not in data:
        return f"required field missing: the kind of document ({_KNOWN_KINDS})"
    return f"unknown kind {_got(data['kind'])}; known kinds: {_KNOWN_KINDS}"


def _api_version_problem(data: Mapping[str, Any]) -> str:
    if "apiVersion" not in data:
        return f"required field missing: apiVersion ({API_VERSION})"
    return f"must be {API_VERSION!r} (got {_got(data['apiVersion'])})"


def _loc(err: ErrorDetails) -> Loc:
    # pydantic marks a mapping key's own error with a trailing '[key]'; the key's position is the same.
    return tuple(part for part in err["loc"] if part != "[key]")


def _got(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:60] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, datetime.date):
        return f"a date ({value.isoformat()}; quote it to make it a string)"
    return type(value).__name__


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
}


def _message(err: ErrorDetails, model: type[BaseModel]) -> str:
    """A short message in the files' terms (YAML names, no Python types)."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return "required field missing"
    if kind == "extra_forbidden":
        loc = _loc(err)
        allowed = _fields_at(model, loc[:-1])
        unknown = str(loc[-1]) if loc else ""
        hint = ""
        if allowed:
            close = difflib.get_close_matches(unknown, allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"
        return f"unknown field{hint}"
    if kind == "greater_than":
        return f"must be greater than {_num(ctx['gt'])} (got {_got(value)})"
    if kind == "greater_than_equal":
        return f"must be at least {_num(ctx['ge'])} (got {_got(value)})"
    if kind == "less_than":
        return f"must be less than {_num(ctx['lt'])} (got {_got(value)})"
    if kind == "less_than_equal":
        return f"must be at most {_num(ctx['le'])} (got {_got(value)})"
    if kind == "literal_error":
        return f"must be {ctx['expected']} (got {_got(value)})"
    if kind == "too_short":
        if ctx.get("actual_length") == 0:
            return "must not be empty"
        return f"must have at least {ctx['min_length']} items"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]} (got {_got(value)})"
    msg = err["msg"]
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The YAML field names allowed at ``loc`` inside ``model`` (for "did you mean"), [] if unknown."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            by_alias = {(info.alias or name): info for name, info in tp.model_fields.items()}
            info = by_alias.get(str(part))
            if info is None:
                return []
            tp = info.annotation
        elif typing.get_origin(tp) in (tuple, list) and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [info.alias or name for name, info in tp.model_fields.items()]
    return []


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional so the type inside can be walked."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp
