"""The decision log and the analytics counts, kept in the store (memory or Redis).

Written off the hot path by `DecisionRecorder` (writer.py) in batches; read by `GetDecision`,
`GetStats`, replay and the console. Bounded: entries older than the retention time, or beyond
the newest `max_entries`, are dropped; day counts live `COUNT_RETENTION_DAYS`.

A count's field is "<category>\\x1f<channel>\\x1f<rule>\\x1f<template>\\x1f<metric>" within its
UTC day; metrics: decided, sent, delivered, opened, clicked, converted, conversion_value,
bounced, unsubscribed, failed, cost, suppressed:<reason>, deferred:<reason>.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SEP = "\x1f"
COUNT_RETENTION_DAYS = 400
DIMENSIONS = ("day", "category", "channel", "rule", "template")

Entry = dict[str, Any]


def count_field(dims: Mapping[str, str], metric: str, channel: str | None = None) -> str:
    """The count field of `metric` for a decision's dimensions (`channel` overrides the plan's:
    an event counts on the channel it happened on)."""
    return SEP.join(
        (
            dims["category"],
            dims["channel"] if channel is None else channel,
            dims["rule"],
            dims["template"],
            metric,
        )
    )


@dataclass(slots=True)
class LogBatch:
    """What one flush writes: new entries, history events per message, count increments."""

    entries: list[Entry] = field(default_factory=list)
    events: list[tuple[str, Entry]] = field(default_factory=list)
    counts: dict[tuple[str, str], float] = field(default_factory=dict)

    def count(self, day: str, name: str, amount: float = 1.0) -> None:
        key = (day, name)
        self.counts[key] = self.counts.get(key, 0.0) + amount

    def __bool__(self) -> bool:
        return bool(self.entries or self.events or self.counts)

    def parts(self, max_entries: int) -> list[LogBatch]:
        """This batch as writes of at most `max_entries` entries each (events and counts go
        with the first), so that no single write holds the event loop for long."""
        if len(self.entries) <= max_entries:
            return [self]
        chunks = [self.entries[i : i + max_entries] for i in range(0, len(self.entries), max_entries)]
        first = LogBatch(chunks[0], self.events, self.counts)
        return [first, *(LogBatch(chunk) for chunk in chunks[1:])]


class DecisionLogStore(abc.ABC):
    """Raises `StoreUnavailableError` / `StoreError` as the other stores do."""

    @abc.abstractmethod
    async def write(self, batch: LogBatch) -> None: ...

    @abc.abstractmethod
    async def get(self, message_id: str) -> Entry | None:
        """The latest entry of the message, with its `history` (oldest first); None when unknown."""

    @abc.abstractmethod
    async def dims(self, message_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The analytics dimensions of the messages still in the log."""

    @abc.abstractmethod
    def scan(self, since_ms: int, until_ms: int) -> AsyncIterator[Entry]:
        """Entries decided in [since_ms, until_ms), oldest first."""

    @abc.abstractmethod
    async def counts(self, days: Sequence[str]) -> dict[str, dict[str, float]]:
        """Per day ("YYYY-MM-DD") its count fields."""

    async def close(self) -> None:
        return None
