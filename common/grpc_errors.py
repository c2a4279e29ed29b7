"""Typed errors <-> gRPC status codes and trailing metadata, for servers and clients alike.

A server turns an ``EdgefleetError`` into a status code (``error_to_status``), its message into the
status details, and its machine-readable ``code`` and ``retry_after`` into trailing metadata
(``error_trailers``); ``abort_with_error`` / ``abort_with_error_async`` do all three. A client turns a
failed call back into the typed error (``error_from_rpc_error``), so callers branch on
``TransientError`` / ``PermanentError`` and on ``code`` exactly as they would locally.

This module may import grpc but never generated protobuf code (``common.serde`` re-exports it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, Final, NoReturn

import grpc
import grpc.aio

from common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EdgefleetError,
    InvalidArgument,
    NotFound,
    PermanentError,
    PermissionDenied,
    ResourceExhausted,
    TransientError,
    Unauthenticated,
)
from common.limits import MAX_TEXT_CHARS

#: Trailing metadata key carrying ``EdgefleetError.code`` (e.g. ``token_expired``).
ERROR_CODE_KEY: Final = "x-edgefleet-error-code"
#: Trailing metadata key carrying ``TransientError.retry_after`` in (possibly fractional) seconds.
RETRY_AFTER_KEY: Final = "retry-after"
#: Status details for exceptions that are not ``EdgefleetError`` (bugs): never leak their text.
INTERNAL_DETAILS: Final = "internal error"

_ERROR_CODE_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

# Most specific first: the first isinstance match wins.
_TO_STATUS: Final[tuple[tuple[type[EdgefleetError], grpc.StatusCode], ...]] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (TransientError, grpc.StatusCode.UNAVAILABLE),
    (PermanentError, grpc.StatusCode.FAILED_PRECONDITION),
)

_PERMANENT_FROM_STATUS: Final[dict[grpc.StatusCode, type[PermanentError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}
# A server's INTERNAL/UNKNOWN (a bug, a locked database) or ABORTED/CANCELLED (a race, a restart) says
# nothing about the request being wrong: retrying later, with backoff, is the safe reading. Treating
# them as permanent would make an agent give up (enrollment) or fail a good model (fetch) for good.
_TRANSIENT_STATUS: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


def error_to_status(exc: BaseException) -> grpc.StatusCode:
    """The status code a server answers with for ``exc`` (INTERNAL for anything unexpected)."""
    for cls, status in _TO_STATUS:
        if isinstance(exc, cls):
            return status
    return grpc.StatusCode.INTERNAL


def error_details(exc: BaseException) -> str:
    """The status details for ``exc``: its message if it is ours, a fixed text otherwise."""
    if isinstance(exc, EdgefleetError):
        return exc.message[:MAX_TEXT_CHARS]
    return INTERNAL_DETAILS


def error_trailers(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata carrying ``exc.code`` and, for transient errors, ``retry_after``."""
    if not isinstance(exc, EdgefleetError):
        return ((ERROR_CODE_KEY, EdgefleetError.code),)
    trailers: list[tuple[str, str]] = []
    if _ERROR_CODE_RE.match(exc.code):
        trailers.append((ERROR_CODE_KEY, exc.code))
    if isinstance(exc, TransientError) and exc.retry_after is not None:
        seconds = float(exc.retry_after)
        if math.isfinite(seconds) and seconds >= 0:
            trailers.append((RETRY_AFTER_KEY, repr(seconds)))
    return tuple(trailers)


def abort_with_error(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """Abort a synchronous RPC with the status, details and trailers for ``exc``."""
    context.set_trailing_metadata(error_trailers(exc))
    context.abort(error_to_status(exc), error_details(exc))


async def abort_with_error_async(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """Abort an asyncio RPC with the status, details and trailers for ``exc``."""
    await context.abort(error_to_status(exc), error_details(exc), trailing_metadata=error_trailers(exc))
    raise AssertionError("unreachable: ServicerContext.abort returned")  # pragma: no cover


def status_to_error(
    code: grpc.StatusCode,
    details: str | None,
    retry_after: float | None = None,
    *,
    error_code: str | None = None,
) -> EdgefleetError:
    """Rebuild the typed error a server signalled (the inverse of ``error_to_status``).

    UNAVAILABLE, INTERNAL, UNKNOWN, ABORTED and CANCELLED give ``TransientError``, DEADLINE_EXCEEDED
    ``DeadlineExceeded``, RESOURCE_EXHAUSTED ``ResourceExhausted``; every other code gives a ``PermanentError``
    (subclass where one fits).
    ``error_code`` (from the trailers) overrides the class's default ``code``.
    """
    message = (details or code.name.lower().replace("_", " "))[:MAX_TEXT_CHARS]
    if error_code is not None and not _ERROR_CODE_RE.match(error_code):
        error_code = None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(message, retry_after=retry_after, code=error_code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(message, retry_after=retry_after, code=error_code)
    if code in _TRANSIENT_STATUS:
        return TransientError(message, retry_after=retry_after, code=error_code or code.name.lower())
    permanent = _PERMANENT_FROM_STATUS.get(code)
    if permanent is not None:
        return permanent(message, code=error_code)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return PermanentError(message, code=error_code)
    return PermanentError(message, code=error_code or code.name.lower())


def error_from_rpc_error(err: grpc.RpcError) -> EdgefleetError:
    """The typed error behind a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    code = _call(err, "code")
    if not isinstance(code, grpc.StatusCode):
        return TransientError(f"rpc failed: {str(err)[:MAX_TEXT_CHARS]}", code="unavailable")
    details = _call(err, "details")
    trailers = _metadata_pairs(_call(err, "trailing_metadata"))
    error_code = trailers.get(ERROR_CODE_KEY)
    return status_to_error(
        code,
        details if isinstance(details, str) else None,
        _parse_retry_after(trailers.get(RETRY_AFTER_KEY)),
        error_code=error_code,
    )


# --- helpers -----------------------------------------------------------------------------------


def _call(obj: object, method: str) -> object:
    fn = getattr(obj, method, None)
    if not callable(fn):
        return None
    try:
        return fn()
    except Exception:
        return None


def _metadata_pairs(metadata: object) -> dict[str, str]:
    """First value of each str-valued key, from a tuple of pairs or a ``grpc.aio.Metadata``."""
    pairs: dict[str, str] = {}
    if not isinstance(metadata, Iterable):
        return pairs
    for item in metadata:
        if not isinstance(item, tuple) or len(item) != 2:
            continue
        key, value = item
        if isinstance(key, str) and isinstance(value, str):
            pairs.setdefault(key.lower(), value)
    return pairs


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
