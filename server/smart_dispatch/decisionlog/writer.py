"""`DecisionRecorder`: fills the decision log and the analytics counts off the hot path.

A telemetry hook: a decision, a send attempt or a dead letter only appends to a list in this
process; a background task flushes every `flush_every_s` (on Redis one script call per
`WRITE_ENTRIES` entries and one pipeline of counts), so a Decide never waits for it, and a
busy flush yields to requests between its writes. Reported events (`engaged`) join
the same batch. What a flush could not write (the store is down) is kept for the next one, up to
`max_pending` items; beyond that the oldest are dropped and counted (`dropped`), never blocking
a decision.

Counting (see base.py for the fields): a decision counts `decided` and, unless sent at once,
`suppressed:<why>` or `deferred:<why>` on its day; a provider's acceptance counts `sent` and the
channel's cost (the rules' `channels:` costs); a dead letter counts `failed`; reported events
count on the day of the decision they are about, on the channel they happened on. A message id
decided again (a later step, a re-drive) replaces its log entry but is counted once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from smart_dispatch.decisionlog.base import DecisionLogStore, Entry, LogBatch, count_field
from smart_dispatch.decisionlog.entry import log_entry
from smart_dispatch.errors import StoreError
from smart_dispatch.events import ReportedEvent
from smart_dispatch.rules.active import ActiveRules
from smart_dispatch.telemetry.base import Counted, DeadLettered, DecisionMade, SendAttempted, TelemetryHooks

log = logging.getLogger(__name__)
_RECENT = 100_000  # message ids whose dimensions this process remembers
#: entries per store write: encoding one takes ~20-40 µs of the event loop, so a write of 64
#: holds it ~2 ms, where one write of a busy 250 ms (several hundred entries) held it 10+ ms
WRITE_ENTRIES = 64
#: events counted by kind (`active` has no message)
_EVENT_METRICS = frozenset(
    {"delivered", "opened", "clicked", "converted", "bounced", "unsubscribed", "failed"}
)


class DecisionRecorder(TelemetryHooks):
    def __init__(
        self,
        store: DecisionLogStore,
        rules: ActiveRules,
        key: bytes,
        *,
        flush_every_s: float = 0.25,
        max_pending: int = 100_000,
        on_counted: Callable[[Counted], None] | None = None,
    ) -> None:
        self._on_counted = on_counted or (lambda event: None)
        self.store = store
        self._rules = rules
        self._key = key
        self._flush_every_s = flush_every_s
        self._max_pending = max_pending
        self._decisions: list[Entry] = []  # built at once: a request is not held
        self._unwritten: LogBatch | None = None  # a batch a failed flush keeps for the next
        self._sends: list[tuple[SendAttempted, datetime]] = []
        self._dead: list[tuple[DeadLettered, datetime]] = []
        self._events: list[ReportedEvent] = []
        self._recent: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self.dropped = 0

    # -- hooks (hot path: append only) ----------------------------------------------------------

    def on_decision(self, event: DecisionMade) -> None:
        if self._room():
            self._decisions.append(log_entry(event, self._key))

    def on_send_attempt(self, event: SendAttempted) -> None:
        if self._room():
            self._sends.append((event, datetime.now(UTC)))

    def on_dead_letter(self, event: DeadLettered) -> None:
        if self._room():
            self._dead.append((event, datetime.now(UTC)))

    def engaged(self, event: ReportedEvent) -> None:
        """A reported event (delivery receipt, engagement) about a message."""
        if event.message_id and self._room():
            self._events.append(event)

    def _room(self) -> bool:
        if len(self._decisions) + len(self._sends) + len(self._events) < self._max_pending:
            return True
        self.dropped += 1
        if self.dropped in (1, 10, 100) or self.dropped % 10_000 == 0:
            log.warning("decision log: %d items dropped (the store is not keeping up)", self.dropped)
        return False

    def pending(self, message_id: str) -> Entry | None:
        """The newest decision of `message_id` not written yet (a lookup right after Decide)."""
        for entry in reversed(self._decisions):
            if entry["message_id"] == message_id:
                return {**entry, "history": []}
        return None

    # -- flushing --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="decision-log")

    async def stop(self) -> None:
        """Stop flushing, after a last flush (bounded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), timeout=5.0)
        except (TimeoutError, StoreError) as exc:
            log.warning("decision log: last flush failed: %s", exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_every_s)
            try:
                await self.flush()
            except StoreError as exc:
                log.warning("decision log: flush failed, kept for the next: %s", exc)
            except Exception:
                log.exception("decision log: flush failed")

    async def flush(self) -> None:
        """Write what is pending as one batch."""
        async with self._flushing:
            batch = self._unwritten or LogBatch()
            self._unwritten = None
            decisions, self._decisions = self._decisions, []
            sends, self._sends = self._sends, []
            dead, self._dead = self._dead, []
            events, self._events = self._events, []
            for event in decisions:
                self._add_decision(batch, event)
            wanted = [s.message_id for s, _ in sends] + [d.message_id for d, _ in dead]
            wanted += [e.message_id for e in events]
            dims = await self._dims([m for m in wanted if m not in self._recent])
            for send, at in sends:
                self._add_send(batch, send, at, dims)
            for letter, at in dead:
                self._add_dead(batch, letter, at, dims)
            for reported in events:
                self._add_event(batch, reported, dims)
            if not batch:
                return
            parts = batch.parts(WRITE_ENTRIES)
            for index, part in enumerate(parts):
                if index:
                    await asyncio.sleep(0)  # requests in between: a flush never stalls them long
                try:
                    await self.store.write(part)
                except StoreError:
                    self._unwritten = _joined(parts[index:])
                    raise

    async def _dims(self, message_ids: list[str]) -> dict[str, dict[str, str]]:
        if not message_ids:
            return {}
        try:
            return await self.store.dims(message_ids)
        except StoreError as exc:
            log.warning("decision log: dimensions of %d messages unknown: %s", len(message_ids), exc)
            return {}

    def _dims_of(self, message_id: str, found: dict[str, dict[str, str]]) -> dict[str, str] | None:
        return self._recent.get(message_id) or found.get(message_id)

    def _add_decision(self, batch: LogBatch, entry: Entry) -> None:
        batch.entries.append(entry)
        if entry["dry_run"]:
            return
        message_id, dims = entry["message_id"], entry["dims"]
        again = message_id in self._recent
        self._recent[message_id] = dims
        self._recent.move_to_end(message_id)
        if len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        if again:
            return
        batch.count(dims["day"], count_field(dims, "decided"))
        if dims["verdict"] != "send":
            kind = "suppressed" if dims["verdict"] == "suppress" else "deferred"
            batch.count(dims["day"], count_field(dims, f"{kind}:{dims['why']}"))

    def _add_send(
        self, batch: LogBatch, send: SendAttempted, at: datetime, found: dict[str, dict[str, str]]
    ) -> None:
        batch.events.append(
            (
                send.message_id,
                _event(at, "attempt", send.channel, send.provider, f"#{send.number}: {send.outcome}"),
            )
        )
        if send.outcome != "delivered":
            return
        cost = self._rules.current().ruleset.learning.cost(send.channel)
        self._on_counted(Counted("cost", send.channel, cost))
        dims = self._dims_of(send.message_id, found)
        if dims is None:
            return
        batch.count(dims["day"], count_field(dims, "sent", send.channel))
        if cost:
            batch.count(dims["day"], count_field(dims, "cost", send.channel), cost)

    def _add_dead(
        self, batch: LogBatch, letter: DeadLettered, at: datetime, found: dict[str, dict[str, str]]
    ) -> None:
        batch.events.append((letter.message_id, _event(at, "dead_lettered", letter.channel)))
        dims = self._dims_of(letter.message_id, found)
        if dims is not None:
            batch.count(dims["day"], count_field(dims, "failed", letter.channel))

    def _add_event(self, batch: LogBatch, event: ReportedEvent, found: dict[str, dict[str, str]]) -> None:
        batch.events.append((event.message_id, _event(event.at, event.kind, event.channel)))
        if event.kind not in _EVENT_METRICS:
            return
        dims = self._dims_of(event.message_id, found)
        self._on_counted(Counted(event.kind, event.channel or (dims["channel"] if dims else "")))
        if dims is None:
            return
        channel = event.channel or dims["channel"]
        batch.count(dims["day"], count_field(dims, event.kind, channel))
        if event.kind == "converted" and event.value:
            batch.count(dims["day"], count_field(dims, "conversion_value", channel), event.value)


def _event(at: datetime, kind: str, channel: str, provider: str = "", detail: str = "") -> dict[str, Any]:
    return {"at": at.isoformat(), "kind": kind, "channel": channel, "provider": provider, "detail": detail}


def _joined(parts: list[LogBatch]) -> LogBatch:
    """The unwritten parts of a flush as one batch again (for the next flush)."""
    out = LogBatch(events=parts[0].events, counts=parts[0].counts)
    for part in parts:
        out.entries.extend(part.entries)
    return out
