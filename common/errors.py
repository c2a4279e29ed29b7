"""Typed errors shared by controller and agent.

Every failure is either *transient* (try again later, possibly after ``retry_after`` seconds) or
*permanent* (trying again with the same input fails the same way). Callers branch on the type,
never on a boolean or on message text. The ``code`` is stable and machine-readable; the message is
for people and names what was wrong.
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base of every error this project raises on purpose."""

    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class TransientError(EdgefleetError):
    """Worth retrying: the same request may succeed later."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentError(EdgefleetError):
    """Not worth retrying as is: the request itself is wrong or refers to something that is not there."""

    code = "failed_precondition"


class InvalidArgument(PermanentError):
    code = "invalid_argument"


class NotFound(PermanentError):
    code = "not_found"


class AlreadyExists(PermanentError):
    code = "already_exists"


class Unauthenticated(PermanentError):
    code = "unauthenticated"


class PermissionDenied(PermanentError):
    code = "permission_denied"


class ResourceExhausted(TransientError):
    code = "resource_exhausted"


class DeadlineExceeded(TransientError):
    """The request's deadline cannot be met (or has passed), so it is refused instead of answered
    late. Transient: with a fresh budget it may well succeed (here or on another worker);
    ``retry_after`` is usually unset, since retrying with the same deadline is pointless."""

    code = "deadline_exceeded"

    def __init__(
        self,
        message: str,
        *,
        shortfall_s: float = 0.0,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after, code=code)
        #: By how much the deadline is (expected to be) missed; 0.0 when unknown.
        self.shortfall_s = shortfall_s
