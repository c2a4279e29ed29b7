"""Telemetry bookkeeping for the agent core: sequence numbers, the pending queue, the batch in flight.

Records (inference results and device events) get increasing sequence numbers, wait in a bounded
queue, and go out in batches, one batch in flight at a time; the controller acks by sequence and
dedups by (device, sequence), so a batch is simply sent again until acked. Sequence numbers are
reserved (and persisted by the caller) a block at a time, so a restart never reuses one.

The core must leave its state untouched when a step fails. Copying a queue of up to ``max_pending``
records on every event would cost more than the event itself, so changes to the queue are journaled
between ``begin`` and ``commit`` and undone by ``rollback``: the cost of undo is proportional to
what the step changed, not to the size of the queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial

from common.types import DeviceEvent, InferenceRecord, TelemetryBatch, TelemetryRecord

#: Telemetry sequence numbers are reserved (and persisted) this many at a time.
SEQUENCE_BLOCK = 1000


class Telemetry:
    def __init__(
        self, *, max_batch: int, max_pending: int, ack_timeout_s: float, flush_interval_s: float
    ) -> None:
        self._max_batch = max_batch
        self._max_pending = max_pending
        #: A batch not acked within this long is sent again.
        self._ack_timeout_s = ack_timeout_s
        #: A record waits at most this long for a batch to fill.
        self._flush_interval_s = flush_interval_s
        self._pending: deque[TelemetryRecord] = deque()
        self.inflight: tuple[TelemetryRecord, ...] = ()
        self.inflight_sent_at = 0.0
        #: When the oldest record still waiting to be batched was queued (None: nothing waits).
        self.oldest_pending_at: float | None = None
        self.next_sequence = 1
        self.reserved_until = 0
        self.records_dropped = 0
        #: While a step runs: how to undo each change made to the queue, oldest first.
        self._journal: list[Callable[[], object]] | None = None
        self._saved: tuple[tuple[TelemetryRecord, ...], float, float | None, int, int, int] | None = None

    # --- reading ----------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Records not yet acknowledged: waiting plus in flight."""
        return len(self._pending) + len(self.inflight)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def pending(self) -> Iterator[TelemetryRecord]:
        """The records waiting to be batched, oldest first."""
        return iter(self._pending)

    @property
    def last_used_sequence(self) -> int:
        return self.next_sequence - 1

    # --- transactions -------------------------------------------------------------------------------

    def begin(self) -> None:
        """Start journaling: everything until ``commit`` can be undone by ``rollback``."""
        self._journal = []
        self._saved = (
            self.inflight,
            self.inflight_sent_at,
            self.oldest_pending_at,
            self.next_sequence,
            self.reserved_until,
            self.records_dropped,
        )

    def commit(self) -> None:
        self._journal = None
        self._saved = None

    def rollback(self) -> None:
        """Undo every change since ``begin`` (newest first), then restore the scalars."""
        journal, saved = self._journal, self._saved
        self.commit()
        if journal is None or saved is None:
            return
        for undo in reversed(journal):
            undo()
        (
            self.inflight,
            self.inflight_sent_at,
            self.oldest_pending_at,
            self.next_sequence,
            self.reserved_until,
            self.records_dropped,
        ) = saved

    def _popleft(self) -> TelemetryRecord:
        record = self._pending.popleft()
        if self._journal is not None:
            self._journal.append(partial(self._pending.appendleft, record))
        return record

    # --- changes ------------------------------------------------------------------------------------

    def restore(self, reserved_until: int, records_dropped: int) -> None:
        """After a restart: never reuse a sequence number that may already have reached the controller."""
        self.next_sequence = reserved_until + 1
        self.reserved_until = reserved_until
        self.records_dropped = records_dropped

    def append(self, body: InferenceRecord | DeviceEvent, *, now: float, timestamp_ms: int) -> bool:
        """Queue one record; True when a new block of sequence numbers was reserved (persist it
        before any record of the block is sent)."""
        reserved = self._take_sequence_block_if_needed()
        record = TelemetryRecord(sequence=self.next_sequence, timestamp_ms=timestamp_ms, body=body)
        self.next_sequence += 1
        self._pending.append(record)
        if self._journal is not None:
            self._journal.append(self._pending.pop)
        self._trim()
        if self.oldest_pending_at is None:
            self.oldest_pending_at = now
        return reserved

    def _take_sequence_block_if_needed(self) -> bool:
        if self.next_sequence <= self.reserved_until:
            return False
        self.reserved_until = self.next_sequence + SEQUENCE_BLOCK - 1
        return True

    def renumber_past(self, watermark: int) -> None:
        """The controller holds sequences we never issued (our state was lost): renumber everything
        waiting above them, or its dedup would take our new records for ones it already has. The
        caller persists the new reservation."""
        self.next_sequence = watermark + 1
        renumbered: deque[TelemetryRecord] = deque()
        for r in self._pending:
            renumbered.append(replace(r, sequence=self.next_sequence))
            self.next_sequence += 1
        if self._journal is not None:
            self._journal.append(partial(setattr, self, "_pending", self._pending))
        self._pending = renumbered
        self.reserved_until = self.next_sequence + SEQUENCE_BLOCK - 1

    def _trim(self) -> None:
        """Bound memory: waiting plus in flight never exceed max_pending; the oldest go first, counted."""
        while self._pending and len(self._pending) + len(self.inflight) > self._max_pending:
            self._popleft()
            self.records_dropped += 1

    def ack(self, up_to: int) -> None:
        if self.inflight and self.inflight[-1].sequence <= up_to:
            self.inflight = ()
        while self._pending and self._pending[0].sequence <= up_to:
            self._popleft()
        if not self._pending:
            self.oldest_pending_at = None

    def requeue_inflight(self, now: float) -> None:
        """The link dropped: what was in flight was not acknowledged and goes out again, first."""
        if self.inflight:
            pending, n = self._pending, len(self.inflight)
            pending.extendleft(reversed(self.inflight))
            if self._journal is not None:
                self._journal.append(lambda: [pending.popleft() for _ in range(n)])
            self.inflight = ()
        self._trim()
        if self._pending and self.oldest_pending_at is None:
            self.oldest_pending_at = now

    def next_due(self) -> float | None:
        """When ``due`` may next have a batch to send (while connected)."""
        if self.inflight:
            return self.inflight_sent_at + self._ack_timeout_s
        if self.oldest_pending_at is not None:
            return self.oldest_pending_at + self._flush_interval_s
        return None

    def due(self, now: float) -> TelemetryBatch | None:
        """The batch to send now, if any: the one in flight again after the ack timeout, or a new one
        when the oldest record has waited the flush interval or a full batch is waiting."""
        if self.inflight:
            if now >= self.inflight_sent_at + self._ack_timeout_s:
                self.inflight_sent_at = now
                return TelemetryBatch(self.inflight)
            return None
        if not self._pending:
            return None
        due = self.oldest_pending_at is not None and now >= self.oldest_pending_at + self._flush_interval_s
        if not due and len(self._pending) < self._max_batch:
            return None
        self.inflight = tuple(self._popleft() for _ in range(min(self._max_batch, len(self._pending))))
        self.inflight_sent_at = now
        self.oldest_pending_at = now if self._pending else None
        return TelemetryBatch(self.inflight)
