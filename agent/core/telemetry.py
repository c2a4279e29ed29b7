"""Telemetry bookkeeping for the agent core: sequence numbers, the durable outbox, the batch in flight.

Records (inference results and device events) get increasing sequence numbers and are written to
the driver's **outbox** (``AppendTelemetry``, a SQLite WAL on disk) the moment they are made, before
anything can send them: a record the controller has not acknowledged survives a crash or a reboot.
They go out in batches, one batch in flight at a time; the controller acks by sequence and dedups by
(device, sequence), so a batch is simply sent again until acked, and an ack deletes what it covers
from the outbox (``DeleteTelemetry``). Sequence numbers are reserved (and persisted by the caller) a
block at a time, so a restart never reuses one.

Memory stays bounded however long the device is offline: the core keeps at most ``window`` of the
oldest unsent records in memory (what the next batches are made of); newer ones live only in the
outbox (``unloaded`` counts them) until the window has room, when the core asks for the next ones
(``LoadTelemetry`` -> ``TelemetryLoaded``). The outbox alone enforces the disk budget, dropping by its
policy; it says what it dropped (``OutboxTrimmed``), and every dropped record is counted and reported.

The outbox actions are written into the step's action list as they happen (``begin(out)``), so an
append always comes before any send of the record, and a failed step (whose actions the core
discards) leaves no outbox action behind. Changes to the in-memory window are journaled between
``begin`` and ``commit`` and undone by ``rollback``: the cost of undo is proportional to what the
step changed, not to the size of the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial

from agent.core import actions as act
from common.types import DeviceEvent, InferenceRecord, TelemetryBatch, TelemetryRecord

#: Telemetry sequence numbers are reserved (and persisted) this many at a time.
SEQUENCE_BLOCK = 1000


@dataclass(frozen=True, slots=True)
class OutboxState:
    """What the driver's outbox holds at start-up: ``count`` records, sequences ``first..last``."""

    count: int = 0
    first_sequence: int = 0
    last_sequence: int = 0


class Telemetry:
    def __init__(self, *, max_batch: int, window: int, ack_timeout_s: float, flush_interval_s: float) -> None:
        self._max_batch = max_batch
        self._window = max(window, max_batch)
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
        #: Records in the outbox newer than everything in memory (not loaded yet).
        self.unloaded = 0
        #: A LoadTelemetry is out: records made meanwhile stay unloaded, so the window keeps order.
        self.loading = False
        self._made_while_loading = 0
        #: While a step runs: its action list, how to undo each change to the window, the scalars.
        self._out: list[act.Action] | None = None
        self._journal: list[Callable[[], object]] | None = None
        self._saved: tuple[object, ...] | None = None

    # --- reading ----------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Records not yet acknowledged: waiting (in memory or only in the outbox) plus in flight."""
        return len(self._pending) + self.unloaded + len(self.inflight)

    @property
    def waiting(self) -> int:
        return len(self._pending) + self.unloaded

    def pending(self) -> Iterator[TelemetryRecord]:
        """The records waiting in memory to be batched, oldest first."""
        return iter(self._pending)

    @property
    def last_used_sequence(self) -> int:
        return self.next_sequence - 1

    # --- transactions -------------------------------------------------------------------------------

    def begin(self, out: list[act.Action]) -> None:
        """Start a step: outbox actions go into ``out``; everything until ``commit`` can be undone."""
        self._out = out
        self._journal = []
        self._saved = (
            self.inflight,
            self.inflight_sent_at,
            self.oldest_pending_at,
            self.next_sequence,
            self.reserved_until,
            self.records_dropped,
            self.unloaded,
            self.loading,
            self._made_while_loading,
        )

    def commit(self) -> None:
        self._out = None
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
            self.unloaded,
            self.loading,
            self._made_while_loading,
        ) = saved  # type: ignore[assignment]

    def _emit(self, action: act.Action) -> None:
        if self._out is not None:
            self._out.append(action)

    def _popleft(self) -> TelemetryRecord:
        record = self._pending.popleft()
        if self._journal is not None:
            self._journal.append(partial(self._pending.appendleft, record))
        return record

    def _push(self, record: TelemetryRecord) -> None:
        self._pending.append(record)
        if self._journal is not None:
            self._journal.append(self._pending.pop)

    # --- changes ------------------------------------------------------------------------------------

    def restore(
        self, reserved_until: int, records_dropped: int, outbox: OutboxState | None, now: float
    ) -> None:
        """After a restart: never reuse a sequence number that may already have reached the controller,
        and send what the outbox still holds (loaded into memory a window at a time)."""
        held = outbox.last_sequence if outbox is not None else 0
        self.next_sequence = max(reserved_until, held) + 1
        self.reserved_until = max(reserved_until, held)
        self.records_dropped = records_dropped
        if outbox is not None and outbox.count > 0:
            self.unloaded = outbox.count
            self.oldest_pending_at = now
            self._load_more()

    def append(self, body: InferenceRecord | DeviceEvent, *, now: float, timestamp_ms: int) -> bool:
        """Write one record to the outbox and queue it; True when a new block of sequence numbers was
        reserved (persist it before any record of the block is sent)."""
        reserved = self._take_sequence_block_if_needed()
        record = TelemetryRecord(sequence=self.next_sequence, timestamp_ms=timestamp_ms, body=body)
        self.next_sequence += 1
        self._emit(act.AppendTelemetry(record))
        if self.unloaded or self.loading or len(self._pending) + len(self.inflight) >= self._window:
            self.unloaded += 1  # the outbox has it; memory takes it when its turn comes
            if self.loading:
                self._made_while_loading += 1
        else:
            self._push(record)
        if self.oldest_pending_at is None:
            self.oldest_pending_at = now
        return reserved

    def _take_sequence_block_if_needed(self) -> bool:
        if self.next_sequence <= self.reserved_until:
            return False
        self.reserved_until = self.next_sequence + SEQUENCE_BLOCK - 1
        return True

    def loaded(self, records: tuple[TelemetryRecord, ...], *, requested: int, now: float) -> None:
        """The outbox's answer to LoadTelemetry: up to ``requested`` records after those in memory."""
        self.loading = False
        newest = self._newest_in_memory()
        fresh = [r for r in records if r.sequence > newest]
        for r in fresh:
            self._push(r)
        if len(records) < requested:
            # The outbox had nothing more when it read: what is unloaded now was made since.
            self.unloaded = self._made_while_loading
        else:
            self.unloaded = max(0, self.unloaded - len(fresh))
        self._made_while_loading = 0
        if (self._pending or self.unloaded) and self.oldest_pending_at is None:
            self.oldest_pending_at = now

    def trimmed(self, dropped: int, first: int, last: int) -> None:
        """The outbox dropped ``dropped`` records, sequences within ``first..last``, by its budget:
        gone, counted and reported. Those in memory go too (memory only ever holds what the outbox
        does, so the two never disagree); an in-flight batch among them may still reach the
        controller, so the count may include up to one batch that did arrive."""
        self.records_dropped += dropped
        if self.inflight and self.inflight[0].sequence <= last and self.inflight[-1].sequence >= first:
            self.inflight = ()
        kept = [r for r in self._pending if not first <= r.sequence <= last]
        in_memory = len(self._pending) - len(kept)
        if in_memory:
            if self._journal is not None:
                self._journal.append(partial(setattr, self, "_pending", self._pending))
            self._pending = deque(kept)
        self.unloaded = max(0, self.unloaded - max(0, dropped - in_memory))
        if not self._pending and not self.unloaded:
            self.oldest_pending_at = None
        elif not self._pending:
            self._load_more()

    def renumber_past(self, watermark: int) -> None:
        """The controller holds sequences we never issued (our state was lost): renumber everything
        unsent above them, in order, in the outbox and in memory (which holds its oldest records), or
        the controller's dedup would take our new records for ones it already has. The caller
        persists the new reservation."""
        start = watermark + 1
        self._emit(act.RenumberTelemetry(start_at=start))
        unsent = [*self.inflight, *self._pending]
        renumbered = deque(replace(r, sequence=start + i) for i, r in enumerate(unsent))
        if self._journal is not None:
            self._journal.append(partial(setattr, self, "_pending", self._pending))
        self._pending, self.inflight = renumbered, ()
        self.next_sequence = start + len(renumbered) + self.unloaded
        self.reserved_until = self.next_sequence + SEQUENCE_BLOCK - 1

    def ack(self, up_to: int) -> None:
        if up_to <= 0:
            return
        self._emit(act.DeleteTelemetry(up_to))
        if self.inflight and self.inflight[0].sequence <= up_to:
            # All of it (or, if the controller acked part of it, what is left is sent again).
            self.inflight = tuple(r for r in self.inflight if r.sequence > up_to)
        while self._pending and self._pending[0].sequence <= up_to:
            self._popleft()
        if not self._pending and self.unloaded:
            self._load_more()
        elif not self._pending:
            self.oldest_pending_at = None

    def requeue_inflight(self, now: float) -> None:
        """The link dropped: what was in flight was not acknowledged and goes out again, first."""
        if self.inflight:
            pending, n = self._pending, len(self.inflight)
            pending.extendleft(reversed(self.inflight))
            if self._journal is not None:
                self._journal.append(lambda: [pending.popleft() for _ in range(n)])
            self.inflight = ()
        if self._pending and self.oldest_pending_at is None:
            self.oldest_pending_at = now

    def _newest_in_memory(self) -> int:
        if self._pending:
            return self._pending[-1].sequence
        return self.inflight[-1].sequence if self.inflight else 0

    def _load_more(self) -> None:
        room = self._window - len(self._pending) - len(self.inflight)
        if self.loading or not self.unloaded or room <= 0:
            return
        self.loading = True
        self._made_while_loading = 0
        # After the newest record in memory; with none, from the outbox's oldest (it holds only
        # unacknowledged records).
        self._emit(act.LoadTelemetry(after_sequence=self._newest_in_memory(), limit=room))

    def next_due(self) -> float | None:
        """When ``due`` may next have a batch to send (while connected)."""
        if self.inflight:
            return self.inflight_sent_at + self._ack_timeout_s
        if self.oldest_pending_at is not None and self._pending:
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
        self.oldest_pending_at = now if self._pending or self.unloaded else None
        if len(self._pending) < self._max_batch:
            self._load_more()  # the next batch's records, while this one is in flight
        return TelemetryBatch(self.inflight)
