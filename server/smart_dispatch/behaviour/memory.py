"""The embedded behaviour store (`memory://`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from smart_dispatch.behaviour.base import (
    CHANNEL_EVENTS,
    ENGAGEMENTS,
    Behaviour,
    BehaviourStore,
    ChannelStats,
    EventKind,
)


@dataclass(slots=True)
class _User:
    last_active_at: datetime | None = None
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)


class MemoryBehaviourStore(BehaviourStore):
    def __init__(self) -> None:
        self._users: dict[str, _User] = {}

    async def record(self, user_id: str, event: EventKind, channel: str | None, at: datetime) -> None:
        user = self._users.setdefault(user_id, _User())
        if channel is not None and event in CHANNEL_EVENTS:
            user.counts[(channel, event)] += 1
        if event in ENGAGEMENTS and (user.last_active_at is None or at > user.last_active_at):
            user.last_active_at = at

    async def get(self, user_id: str) -> Behaviour:
        user = self._users.get(user_id)
        if user is None:
            return Behaviour()
        channels = {ch for ch, _ in user.counts}
        stats = {
            ch: ChannelStats(**{event: user.counts[(ch, event)] for event in CHANNEL_EVENTS})
            for ch in channels
        }
        return Behaviour(user.last_active_at, stats)
