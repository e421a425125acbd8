"""The decision log and analytics counts in this process (the `memory://` store).

Entries are kept as JSON text (compact, immutable, their size known), bounded by count, age and
bytes (`max_bytes`), oldest dropped first. Day counts are kept for `COUNT_RETENTION_DAYS` before
the latest day counted (on Redis each day's hash expires that long after its last write).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import date, timedelta

from smart_dispatch.decisionlog.base import COUNT_RETENTION_DAYS, DecisionLogStore, Entry, LogBatch

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class MemoryDecisionLog(DecisionLogStore):
    def __init__(
        self,
        retention_s: float = 7 * 86400.0,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.time,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._retention_ms = int(retention_s * 1000)
        self._max = max(1, max_entries)
        self._max_bytes = max(1, max_bytes)
        self._clock = clock
        # message id -> (decided at ms, entry JSON, dims, history JSON lines); in decision order.
        # Only atoms, a str-valued dict and tuples: the cyclic GC stops tracking such a tuple at
        # its first pass, so a million entries cost the collector nothing (a list each did)
        self._entries: OrderedDict[str, tuple[int, str, dict[str, str], tuple[str, ...]]] = OrderedDict()
        self._bytes = 0
        self._counts: dict[str, dict[str, float]] = {}

    async def write(self, batch: LogBatch) -> None:
        for entry in batch.entries:
            message_id = entry["message_id"]
            previous = self._entries.pop(message_id, None)
            history = previous[3] if previous else ()
            if previous:
                self._bytes -= len(previous[1])
            text = json.dumps(entry, separators=(",", ":"), default=str)
            self._entries[message_id] = (entry["at_ms"], text, entry["dims"], history)
            self._bytes += len(text)
        for message_id, event in batch.events:
            kept = self._entries.get(message_id)
            if kept is not None:
                line = json.dumps(event, separators=(",", ":"), default=str)
                at_ms, text, dims, history = kept
                self._entries[message_id] = (at_ms, text, dims, (*history, line))  # keeps its place
                self._bytes += len(line)
        for (day, name), amount in batch.counts.items():
            fields = self._counts.get(day)
            if fields is None:
                fields = self._counts[day] = {}
                self._forget_old_days()
            fields[name] = fields.get(name, 0.0) + amount
        self._trim()

    def _forget_old_days(self) -> None:
        """Keep the counts of `COUNT_RETENTION_DAYS` before the latest day counted (a request
        clock's days too, so a long simulation does not pile them up either)."""
        try:
            latest = date.fromisoformat(max(self._counts))
        except ValueError:  # not a day: nothing to compare with
            return
        horizon = (latest - timedelta(days=COUNT_RETENTION_DAYS)).isoformat()
        for day in [day for day in self._counts if day < horizon]:
            del self._counts[day]

    def _trim(self) -> None:
        cutoff = int(self._clock() * 1000) - self._retention_ms
        while self._entries:
            at_ms, text, _, history = next(iter(self._entries.values()))
            if len(self._entries) <= self._max and self._bytes <= self._max_bytes and at_ms >= cutoff:
                break
            self._entries.popitem(last=False)
            self._bytes -= len(text) + sum(len(line) for line in history)

    async def get(self, message_id: str) -> Entry | None:
        kept = self._entries.get(message_id)
        if kept is None:
            return None
        entry: Entry = json.loads(kept[1])
        entry["history"] = [json.loads(line) for line in kept[3]]
        return entry

    async def dims(self, message_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        out = {}
        for message_id in message_ids:
            kept = self._entries.get(message_id)
            if kept is not None:
                out[message_id] = kept[2]
        return out

    async def scan(self, since_ms: int, until_ms: int) -> AsyncIterator[Entry]:
        texts = sorted(
            (at, text) for at, text, _, _ in list(self._entries.values()) if since_ms <= at < until_ms
        )
        for _, text in texts:
            yield json.loads(text)

    async def counts(self, days: Sequence[str]) -> dict[str, dict[str, float]]:
        return {day: dict(self._counts[day]) for day in days if day in self._counts}
