"""The embedded behaviour store (`memory://`): the reference for the semantics of base.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from smart_dispatch.behaviour.base import (
    CHANNEL_EVENTS,
    ENGAGEMENTS,
    MESSAGE_TTL_S,
    Behaviour,
    BehaviourStore,
    Decayed,
    EngagementEvent,
    Population,
    Recorded,
    SentMessage,
    activity_key,
    population_updates,
    prior_keys,
)


@dataclass(slots=True)
class _User:
    last_active_s: float | None = None
    counts: dict[str, Decayed] = field(default_factory=dict)


@dataclass(slots=True)
class _Message:
    channel: str = ""
    slot: str = ""
    category: str = ""
    seen: set[str] = field(default_factory=set)
    kept_until_s: float = 0.0


class MemoryBehaviourStore(BehaviourStore):
    """Message records are forgotten `MESSAGE_TTL_S` after they were written (by the real
    clock: a simulation on a request clock keeps them as long)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._users: dict[str, _User] = {}
        self._messages: dict[tuple[str, str], _Message] = {}
        self._population: dict[str, Decayed] = {}
        self._clock = clock
        self._next_sweep_s = 0.0

    async def decided(self, sent: SentMessage, half_life_s: float) -> bool:
        self._sweep()
        key = (sent.user_id, sent.message_id)
        if key in self._messages:
            return False
        self._messages[key] = _Message(
            sent.channel, sent.slot, sent.category, kept_until_s=self._clock() + MESSAGE_TTL_S
        )
        user = self._users.setdefault(sent.user_id, _User())
        for name in (f"{sent.channel}:sent", f"slot:{sent.slot}:sent"):
            _add(user.counts, name, 1.0, sent.at_s, half_life_s)
        names = [f"{key}:{sent.channel}:sent" for key in prior_keys(sent.category)]
        for name in (*names, f"slot:{sent.slot}:sent"):
            _add(self._population, name, 1.0, sent.at_s, half_life_s)
        return True

    async def record(self, event: EngagementEvent, half_life_s: float) -> Recorded:
        user = self._users.setdefault(event.user_id, _User())
        if event.kind in ENGAGEMENTS and (user.last_active_s is None or event.at_s > user.last_active_s):
            user.last_active_s = event.at_s
        if event.kind == "active":
            _add(user.counts, activity_key(event.at_s), 1.0, event.at_s, half_life_s)
        if event.channel is None or event.kind not in CHANNEL_EVENTS or not event.message_id:
            return Recorded(False)
        self._sweep()
        message = self._messages.get((event.user_id, event.message_id))
        sent_too = message is None or not message.channel
        if message is None:
            message = self._messages[(event.user_id, event.message_id)] = _Message(
                kept_until_s=self._clock() + MESSAGE_TTL_S
            )
        flag = f"{event.kind}:{event.channel}"
        if flag in message.seen:
            return Recorded(False)
        message.seen.add(flag)
        if sent_too and "sent" in message.seen:
            sent_too = False  # an earlier event of this unknown message counted its send
        if sent_too:
            message.seen.add("sent")
        recorded = Recorded(True, message.channel or event.channel, message.slot, message.category, sent_too)
        channel = recorded.channel
        _add(user.counts, f"{channel}:{event.kind}", 1.0, event.at_s, half_life_s)
        if event.kind == "converted" and event.value:
            _add(user.counts, f"{channel}:value", event.value, event.at_s, half_life_s)
        if sent_too:
            _add(user.counts, f"{channel}:sent", 1.0, event.at_s, half_life_s)
        if recorded.slot and event.kind == "opened":
            _add(user.counts, f"slot:{recorded.slot}:opened", 1.0, event.at_s, half_life_s)
        for name, amount in population_updates(recorded, event.kind, event.value):
            _add(self._population, name, amount, event.at_s, half_life_s)
        return recorded

    async def get(self, user_id: str) -> Behaviour:
        user = self._users.get(user_id)
        if user is None:
            return Behaviour()
        active = None if user.last_active_s is None else datetime.fromtimestamp(user.last_active_s, UTC)
        return Behaviour(active, dict(user.counts))

    async def population(self) -> Population:
        return Population(dict(self._population))

    def _sweep(self) -> None:
        now = self._clock()
        if now < self._next_sweep_s:
            return
        self._next_sweep_s = now + 60.0
        expired = [key for key, message in self._messages.items() if message.kept_until_s <= now]
        for key in expired:
            del self._messages[key]


def _add(counts: dict[str, Decayed], name: str, amount: float, at_s: float, half_life_s: float) -> None:
    counts[name] = counts.get(name, Decayed()).add(amount, at_s, half_life_s)
