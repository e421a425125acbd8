"""The options of the state stores and the bundle `stores_from_url` returns (no backend here:
the builders in `stores.memory` and `stores.redis` import this module, never the reverse)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from smart_dispatch.behaviour.base import BehaviourStore
from smart_dispatch.counters.base import CounterStore
from smart_dispatch.decisionlog.base import DecisionLogStore
from smart_dispatch.decisionlog.memory import MemoryDecisionLog
from smart_dispatch.dispatch.store import DispatchStore
from smart_dispatch.inbox.base import InboxStore
from smart_dispatch.lists.base import ListStore
from smart_dispatch.preferences.base import PreferenceStore
from smart_dispatch.preferences.memory import MemoryPreferenceStore
from smart_dispatch.ratelimit.base import MemoryRateLimiter, RateLimiter
from smart_dispatch.user_state import UserStateReader


class Closeable(Protocol):
    """What a bundle's shared connection is to it (a redis-py client)."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """`timeout_s` bounds every store call; `prefix` starts every key."""

    timeout_s: float = 0.25
    prefix: str = "sd"
    claim_timeout_s: float = 30.0
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    decision_log_retention_s: float = 7 * 86400.0
    decision_log_max_entries: int = 1_000_000


@dataclass(frozen=True, slots=True)
class Stores:
    """The stores of one backend. `client` is the connection they share (the Redis client; None
    in memory): the bundle owns it, no store closes it, `close` does once, after the stores."""

    counters: CounterStore
    lists: ListStore
    behaviour: BehaviourStore
    dispatches: DispatchStore
    inbox: InboxStore
    user_state: UserStateReader
    url: str
    rate_limits: RateLimiter = field(default_factory=MemoryRateLimiter)
    decisions: DecisionLogStore = field(default_factory=MemoryDecisionLog)
    preferences: PreferenceStore = field(default_factory=MemoryPreferenceStore)
    client: Closeable | None = None

    async def close(self) -> None:
        for store in (self.counters, self.lists, self.behaviour, self.dispatches, self.inbox, self.decisions):
            await store.close()
        await self.preferences.close()
        if self.client is not None:
            await self.client.aclose()
