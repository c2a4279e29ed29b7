"""Errors of the serving building blocks beyond those in ``common/errors.py``.

They extend the shared hierarchy, so a servicer maps them to a gRPC status like every other typed
error (``common.grpc_errors``: a ``TransientError`` becomes UNAVAILABLE with its ``code`` and
``retry-after`` in the trailers) and callers branch on the type and ``code``, never on text.
"""

from __future__ import annotations

from common.errors import DeadlineExceeded, PermanentError, TransientError

# ``DeadlineExceeded`` (code ``deadline_exceeded``, with ``shortfall_s``) lives in ``common.errors``,
# where ``common.grpc_errors`` maps it to DEADLINE_EXCEEDED; it is re-exported here for the serving code.
__all__ = ["DeadlineExceeded", "NotBatchable", "RunFailed"]


class RunFailed(TransientError):
    """The model run of a batch raised something that is neither ours nor a rejected input.

    Transient on purpose: the other requests of a batch are collateral to whatever failed (a batch
    too large for memory, a runtime hiccup), and the same request alone, later or on another worker,
    may succeed. A model that cannot run at all never gets here: it fails its smoke test on load.
    """

    code = "run_failed"


class NotBatchable(PermanentError):
    """The model's outputs do not carry the batch on axis 0, so a batch cannot be split back by rows.

    Permanent: the segment must be served with batching off (``max_batch_size=1``).
    """

    code = "not_batchable"
