"""The durable outbox: no event is lost between :meth:`Outbox.publish` and the broker's PUBACK.

* ``publish()`` returns only once the event is committed to the agent's SQLite store (WAL,
  ``synchronous=FULL``): it survives broker outages, restarts, ``kill -9`` and power cuts.
* Group commit: callers queue their events and one writer commits everything queued in one
  transaction (in a worker thread), then answers all of them; while a commit runs the next
  batch gathers. Rows acknowledged by the broker are deleted in the same transactions.
* Sending: QoS 1 in ``seq`` order with up to ``window`` messages in flight on one
  connection (so the order per topic holds); a row is deleted only after its PUBACK. After
  a reconnect every unacknowledged row is sent again from the oldest, so a consumer may see
  a message twice and de-duplicates by ``eventId``; first occurrences stay in order.
* Bounded by events and bytes: an ``OUTBOX_HIGH_WATER`` event when 80 % is reached; at the
  bound the oldest low-priority events are dropped and one ``OUTBOX_DROPPED`` event counts
  them. High-priority events (a run's outcome, the alarms) are never dropped; they are
  admitted even past the bound.

All state lives in the event loop; only SQLite runs in the worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.errors import StateError
from agent.mqtt.client import MqttConnectionError, Session
from agent.mqtt.events import Priority, make_encoded, priority_of
from agent.store import Store

_log = logging.getLogger(__name__)

COMPONENT = "mqtt_outbox"
MIGRATIONS = (
    """
    CREATE TABLE mqtt_outbox (
        seq      INTEGER PRIMARY KEY,
        topic    TEXT NOT NULL,
        priority INTEGER NOT NULL,
        payload  BLOB NOT NULL
    );
    CREATE TABLE mqtt_outbox_meta (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        next_seq INTEGER NOT NULL,
        dropped  INTEGER NOT NULL
    );
    INSERT INTO mqtt_outbox_meta(id, next_seq, dropped) VALUES (1, 1, 0);
    """,
)
#: PUBACK reason codes from 128 up are refusals (MQTT 5; 135 = not authorised).
_REFUSED = 128
#: The high-water alarm re-arms once the outbox is back under this fill level.
_REARM = 0.6
#: Acknowledged rows are deleted in batches of this many, or after this delay.
_DELETE_BATCH = 2000
_DELETE_DELAY = 0.05


@dataclass(frozen=True, slots=True)
class Limits:
    """Size bounds of the outbox."""

    max_events: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    high_water: float = 0.8
    #: Most events per transaction.
    batch_max: int = 5000


@dataclass(slots=True)
class Stats:
    """Counters since the outbox was opened (``dropped_total`` persists)."""

    committed: int = 0
    acked: int = 0
    sent: int = 0
    resent: int = 0
    dropped: int = 0
    dropped_total: int = 0
    refused: int = 0
    commits: int = 0
    high_water_alarms: int = 0


#: One event as stored: (seq, topic, priority, payload), the column order of the table, so a
#: batch goes to ``executemany`` as it is.
_Row = tuple[int, str, int, bytes]
_SEQ: Final = 0
_TOPIC: Final = 1
_PRIORITY: Final = 2
_PAYLOAD: Final = 3


@dataclass(slots=True)
class _Batch:
    rows: list[_Row] = field(default_factory=list)
    waiters: list[tuple[asyncio.Future[dict[str, Any]], dict[str, Any]]] = field(
        default_factory=list
    )
    #: payload bytes of ``rows``
    size: int = 0


class Outbox:
    """Durable QoS 1 event publishing for one appliance.

    Args:
        store: the agent's state store (the outbox's tables are migrated in).
        thing_name: the appliance's thing name, carried by every event.
        topic: where events go (``edge/<thingName>/events``).
        limits: size bounds.
        window: messages in flight at once.
    """

    def __init__(
        self,
        store: Store,
        *,
        thing_name: str,
        topic: str,
        limits: Limits | None = None,
        window: int = 20,
        owns_store: bool = False,
    ) -> None:
        self._store = store
        self._owns_store = owns_store
        self.thing_name = thing_name
        self.topic = topic
        self.limits = limits or Limits()
        self.window = max(1, window)
        self.stats = Stats()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self._rows: dict[int, _Row] = {}
        self._low: collections.deque[int] = collections.deque()
        self._bytes = 0
        self._next_seq = 1
        self._batch = _Batch()
        self._acked: list[int] = []
        self._dropped: list[int] = []
        self._send_queue: collections.deque[int] = collections.deque()
        self._inflight: dict[int, int] = {}
        self._session: Session | None = None
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._alarmed = False
        self._drop_summary: tuple[int, int, int] | None = None
        self._delete_timer: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Load what earlier runs left unacknowledged and start the writer."""
        loop = asyncio.get_running_loop()
        rows, next_seq, dropped = await loop.run_in_executor(self._executor, self._load)
        for row in rows:
            self._admit(row)
        self._next_seq = next_seq
        self.stats.dropped_total = dropped
        self._send_queue.extend(self._rows)
        self._update_empty()
        self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")
        _log.info("outbox opened with %d pending event(s), next seq %d", len(rows), next_seq)

    async def close(self) -> None:
        """Commit what is queued (acks included), stop the writer."""
        self._closing = True
        if self._delete_timer is not None:
            self._delete_timer.cancel()
            self._delete_timer = None
        self._wake.set()
        if self._writer is not None:
            await self._writer
        self._executor.shutdown(wait=True)
        if self._owns_store:
            self._store.close()

    def _load(self) -> tuple[list[_Row], int, int]:
        self._store.migrate(COMPONENT, MIGRATIONS)
        db = self._store.db
        rows: list[_Row] = [
            (r[0], r[1], r[2], bytes(r[3]))
            for r in db.execute(
                "SELECT seq, topic, priority, payload FROM mqtt_outbox ORDER BY seq"
            )
        ]
        meta = db.execute("SELECT next_seq, dropped FROM mqtt_outbox_meta WHERE id = 1").fetchone()
        return rows, int(meta[0]), int(meta[1])

    # --- producing -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events not yet acknowledged by the broker (committed or being committed)."""
        return len(self._rows) + len(self._batch.rows)

    @property
    def pending_bytes(self) -> int:
        """Payload bytes of :attr:`pending`."""
        return self._bytes + self._batch.size

    async def publish(
        self,
        event_type: str,
        body: Mapping[str, Any],
        *,
        priority: Priority | None = None,
    ) -> dict[str, Any]:
        """Queue one event; return it once it is durable (committed to disk)."""
        return await self.submit(event_type, body, priority=priority)

    def submit(
        self,
        event_type: str,
        body: Mapping[str, Any],
        *,
        priority: Priority | None = None,
    ) -> asyncio.Future[dict[str, Any]]:
        """Queue one event; the future resolves with it once it is durable.

        The non-coroutine form of :meth:`publish` for producers of many events at once.
        """
        if self._writer is None or self._closing:
            raise StateError("the outbox is not open", reason="OUTBOX_CLOSED")
        return self._enqueue(event_type, body, priority)

    def _enqueue(
        self, event_type: str, body: Mapping[str, Any], priority: Priority | None
    ) -> asyncio.Future[dict[str, Any]]:
        level = priority if priority is not None else priority_of(event_type)
        seq = self._next_seq
        event, payload = make_encoded(event_type, body, seq=seq, thing_name=self.thing_name)
        self._next_seq = seq + 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        batch = self._batch
        batch.rows.append((seq, self.topic, int(level), payload))
        batch.waiters.append((fut, event))
        batch.size += len(payload)
        self._empty.clear()
        self._wake.set()
        return fut

    async def drained(self) -> None:
        """Wait until every event is acknowledged and deleted."""
        await self._empty.wait()

    # --- the writer ----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = self._take_batch()
            self._apply_bounds(batch)
            acked, self._acked = self._acked, []
            dropped, self._dropped = self._dropped, []
            if batch.rows or acked or dropped:
                try:
                    await loop.run_in_executor(
                        self._executor, self._commit, batch.rows, acked, dropped
                    )
                except (sqlite3.Error, StateError) as exc:
                    self._fail(batch, acked, dropped, exc)
                else:
                    self._committed(batch)
            if self._closing and not self._batch.rows and not self._acked and not self._dropped:
                return

    def _take_batch(self) -> _Batch:
        batch = self._batch
        if len(batch.rows) > self.limits.batch_max:
            cut = self.limits.batch_max
            rest = batch.rows[cut:]
            self._batch = _Batch(rest, batch.waiters[cut:], sum(len(r[_PAYLOAD]) for r in rest))
            batch = _Batch(batch.rows[:cut], batch.waiters[:cut], batch.size - self._batch.size)
            self._wake.set()
        else:
            self._batch = _Batch()
        return batch

    def _apply_bounds(self, batch: _Batch) -> None:
        """Drop the oldest low-priority events so the batch fits; add the alarm events."""
        count = len(self._rows) + len(batch.rows)
        size = self._bytes + batch.size
        fill = max(count / self.limits.max_events, size / self.limits.max_bytes)
        if not self._alarmed and fill < min(_REARM, self.limits.high_water):
            return  # the common case: far from every bound, no alarm to raise or re-arm
        new_low = collections.deque(r for r in batch.rows if r[_PRIORITY] == Priority.LOW)
        dropped: list[int] = []
        dropped_in_batch: set[int] = set()
        while count > self.limits.max_events or size > self.limits.max_bytes:
            if self._low:
                seq = self._low.popleft()
                row = self._rows.get(seq)
                if row is None:
                    continue
                self._forget(seq)
                self._dropped.append(seq)
            elif new_low:
                row = new_low.popleft()
                dropped_in_batch.add(row[_SEQ])
            else:
                break  # only high-priority events left: they are never dropped
            dropped.append(row[_SEQ])
            count -= 1
            size -= len(row[_PAYLOAD])
        if dropped_in_batch:
            _remove(batch, dropped_in_batch)
        if dropped:
            self.stats.dropped += len(dropped)
            self.stats.dropped_total += len(dropped)
            self._count_drops(batch, dropped)
        fill = max(count / self.limits.max_events, size / self.limits.max_bytes)
        if not self._alarmed and fill >= self.limits.high_water:
            self._alarmed = True
            self.stats.high_water_alarms += 1
            self._add_internal(
                batch,
                "OUTBOX_HIGH_WATER",
                {
                    "events": count,
                    "bytes": size,
                    "maxEvents": self.limits.max_events,
                    "maxBytes": self.limits.max_bytes,
                },
            )
        elif self._alarmed and fill < _REARM:
            self._alarmed = False

    def _count_drops(self, batch: _Batch, dropped: list[int]) -> None:
        """Add one OUTBOX_DROPPED event; it replaces an earlier one that was not sent yet."""
        count, first = len(dropped), min(dropped)
        summary = self._drop_summary
        if summary is not None:
            seq, earlier, earlier_first = summary
            if seq in self._rows and seq not in self._inflight.values():
                self._forget(seq)
                self._dropped.append(seq)  # superseded: its count is carried forward
                count += earlier
                first = min(first, earlier_first)
            elif any(r[_SEQ] == seq for r in batch.rows):
                _remove(batch, {seq})
                count += earlier
                first = min(first, earlier_first)
        else:
            _log.warning("outbox full: dropping the oldest low-priority events")
        seq = self._add_internal(
            batch,
            "OUTBOX_DROPPED",
            {
                "dropped": count,
                "totalDropped": self.stats.dropped_total,
                "firstSeq": first,
                "lastSeq": max(dropped),
            },
        )
        self._drop_summary = (seq, count, first)

    def _add_internal(self, batch: _Batch, event_type: str, body: dict[str, Any]) -> int:
        seq = self._next_seq
        _event, payload = make_encoded(event_type, body, seq=seq, thing_name=self.thing_name)
        self._next_seq = seq + 1
        batch.rows.append((seq, self.topic, int(Priority.HIGH), payload))
        batch.size += len(payload)
        return seq

    def _commit(self, rows: list[_Row], acked: list[int], dropped: list[int]) -> None:
        with self._store.transaction() as db:
            if acked or dropped:
                # acks come in seq order: runs of consecutive seqs, one statement per run
                db.executemany(
                    "DELETE FROM mqtt_outbox WHERE seq BETWEEN ? AND ?", seq_runs(acked + dropped)
                )
            if rows:
                db.executemany(
                    "INSERT INTO mqtt_outbox(seq, topic, priority, payload) VALUES (?, ?, ?, ?)",
                    rows,
                )
                db.execute(
                    "UPDATE mqtt_outbox_meta SET next_seq = MAX(next_seq, ?), dropped = ? "
                    "WHERE id = 1",
                    (rows[-1][_SEQ] + 1, self.stats.dropped_total),
                )
            elif dropped:
                db.execute(
                    "UPDATE mqtt_outbox_meta SET dropped = ? WHERE id = 1",
                    (self.stats.dropped_total,),
                )

    def _committed(self, batch: _Batch) -> None:
        self.stats.commits += 1
        self.stats.committed += len(batch.rows)
        rows, low, queue = self._rows, self._low, self._send_queue
        for row in batch.rows:
            seq = row[_SEQ]
            rows[seq] = row
            if row[_PRIORITY] == Priority.LOW:
                low.append(seq)
            queue.append(seq)
        self._bytes += batch.size
        for fut, event in batch.waiters:
            if not fut.done():
                fut.set_result(event)
        self._update_empty()
        self._pump()

    def _fail(self, batch: _Batch, acked: list[int], dropped: list[int], exc: Exception) -> None:
        _log.error("outbox commit failed: %s", exc)
        self._acked[:0] = acked  # deletions are retried with the next commit
        self._dropped[:0] = dropped
        error = StateError(f"the outbox could not commit: {exc}", reason="OUTBOX_WRITE_FAILED")
        for fut, _event in batch.waiters:
            if not fut.done():
                fut.set_exception(error)

    def _admit(self, row: _Row) -> None:
        self._rows[row[_SEQ]] = row
        self._bytes += len(row[_PAYLOAD])
        if row[_PRIORITY] == Priority.LOW:
            self._low.append(row[_SEQ])

    def _forget(self, seq: int) -> None:
        row = self._rows.pop(seq, None)
        if row is not None:
            self._bytes -= len(row[_PAYLOAD])

    def _update_empty(self) -> None:
        if not self._rows and not self._batch.rows and not self._acked:
            self._empty.set()
        else:
            self._empty.clear()

    # --- sending -------------------------------------------------------------------------

    async def attach(self, session: Session) -> None:
        """Send through ``session`` (a :class:`~agent.mqtt.client.Link` hook)."""
        self._session = session
        self._inflight = {}
        unacked = list(self._rows)
        if self.stats.sent:
            self.stats.resent += len(unacked)
        self._send_queue = collections.deque(unacked)
        session.on_ack(functools.partial(self._on_ack, session))
        session.closed.add_done_callback(lambda _f: self._detach(session))
        self._pump()

    def _detach(self, session: Session) -> None:
        if self._session is session:
            self._session = None
            self._inflight = {}

    def _pump(self) -> None:
        session = self._session
        if session is None:
            return
        while len(self._inflight) < self.window and self._send_queue:
            seq = self._send_queue.popleft()
            row = self._rows.get(seq)
            if row is None:
                continue
            try:
                mid = session.publish_nowait(row[_TOPIC], row[_PAYLOAD], qos=1)
            except MqttConnectionError:
                self._send_queue.appendleft(seq)
                self._detach(session)
                return
            self._inflight[mid] = seq
            self.stats.sent += 1

    def _on_ack(self, session: Session, mid: int, reason: int) -> None:
        if session is not self._session:
            return
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return
        if reason >= _REFUSED:
            self.stats.refused += 1
            _log.warning("the broker refused event seq %d (reason code %d); dropped", seq, reason)
        row = self._rows.pop(seq, None)
        if row is not None:
            self._bytes -= len(row[_PAYLOAD])
            self._acked.append(seq)
            self.stats.acked += 1
        if self._send_queue:
            self._pump()
        if len(self._acked) >= _DELETE_BATCH or not self._rows:
            self._wake.set()
        elif self._delete_timer is None:
            # deletions are not urgent (a lost one only means a duplicate): batch them
            self._delete_timer = asyncio.get_running_loop().call_later(
                _DELETE_DELAY, self._flush_deletes
            )

    def _flush_deletes(self) -> None:
        self._delete_timer = None
        self._wake.set()

    def snapshot(self) -> dict[str, Any]:
        """Counters and fill level (for status and tests)."""
        return {
            "pending": self.pending,
            "pendingBytes": self.pending_bytes,
            "inflight": len(self._inflight),
            "maxEvents": self.limits.max_events,
            "maxBytes": self.limits.max_bytes,
            **dataclasses.asdict(self.stats),
        }


def _remove(batch: _Batch, seqs: set[int]) -> None:
    """Take the rows ``seqs`` out of a batch (bound drops, a superseded drop summary)."""
    kept = [r for r in batch.rows if r[_SEQ] not in seqs]
    batch.size = sum(len(r[_PAYLOAD]) for r in kept)
    batch.rows = kept


def seq_runs(seqs: list[int]) -> list[tuple[int, int]]:
    """``seqs`` as (first, last) runs of consecutive numbers: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    runs: list[tuple[int, int]] = []
    if not seqs:
        return runs
    ordered = sorted(seqs)
    first = last = ordered[0]
    for seq in ordered[1:]:
        if seq != last + 1:
            runs.append((first, last))
            first = seq
        last = seq
    runs.append((first, last))
    return runs


async def open_outbox(
    state_dir: Path,
    *,
    thing_name: str,
    topic: str,
    limits: Limits | None = None,
    window: int = 20,
) -> Outbox:
    """Open the outbox in ``<state_dir>/agent.db``."""
    from agent.fsutil import ensure_dir  # noqa: PLC0415 - small, keeps the import graph flat

    ensure_dir(state_dir)
    outbox = Outbox(
        Store(state_dir / "agent.db"),
        thing_name=thing_name,
        topic=topic,
        limits=limits,
        window=window,
        owns_store=True,
    )
    await outbox.open()
    return outbox
