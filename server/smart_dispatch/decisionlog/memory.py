"""The decision log and analytics counts in this process (the `memory://` store)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence

from smart_dispatch.decisionlog.base import DecisionLogStore, Entry, LogBatch


class MemoryDecisionLog(DecisionLogStore):
    def __init__(
        self,
        retention_s: float = 7 * 86400.0,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._retention_ms = int(retention_s * 1000)
        self._max = max(1, max_entries)
        self._clock = clock
        # message id -> (entry, history); in decision order (a new decision moves to the end)
        self._entries: OrderedDict[str, tuple[Entry, list[Entry]]] = OrderedDict()
        self._counts: dict[str, dict[str, float]] = {}

    async def write(self, batch: LogBatch) -> None:
        for entry in batch.entries:
            message_id = entry["message_id"]
            previous = self._entries.pop(message_id, None)
            self._entries[message_id] = (entry, previous[1] if previous else [])
        for message_id, event in batch.events:
            kept = self._entries.get(message_id)
            if kept is not None:
                kept[1].append(event)
        for (day, name), amount in batch.counts.items():
            fields = self._counts.setdefault(day, {})
            fields[name] = fields.get(name, 0.0) + amount
        self._trim()

    def _trim(self) -> None:
        cutoff = int(self._clock() * 1000) - self._retention_ms
        while self._entries:
            entry, _ = next(iter(self._entries.values()))
            if len(self._entries) <= self._max and entry["at_ms"] >= cutoff:
                break
            self._entries.popitem(last=False)

    async def get(self, message_id: str) -> Entry | None:
        kept = self._entries.get(message_id)
        if kept is None:
            return None
        return {**kept[0], "history": list(kept[1])}

    async def dims(self, message_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        out = {}
        for message_id in message_ids:
            kept = self._entries.get(message_id)
            if kept is not None:
                out[message_id] = kept[0]["dims"]
        return out

    async def scan(self, since_ms: int, until_ms: int) -> AsyncIterator[Entry]:
        entries = [e for e, _ in list(self._entries.values()) if since_ms <= e["at_ms"] < until_ms]
        for entry in sorted(entries, key=lambda e: e["at_ms"]):
            yield entry

    async def counts(self, days: Sequence[str]) -> dict[str, dict[str, float]]:
        return {day: dict(self._counts[day]) for day in days if day in self._counts}
