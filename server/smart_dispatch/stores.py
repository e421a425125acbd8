"""One factory for the state stores: a URL selects the backend of counters and lists alike.

memory://                       embedded, in-process (default)
redis://host:port/db            one Redis server
rediss://host:port/db           one Redis server over TLS
redis+cluster://host:port       Redis Cluster (any node as seed)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from smart_dispatch.behaviour.base import BehaviourStore
from smart_dispatch.counters.base import CounterStore
from smart_dispatch.decisionlog.base import DecisionLogStore
from smart_dispatch.decisionlog.memory import MemoryDecisionLog
from smart_dispatch.dispatch.store import DispatchStore
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.inbox.base import InboxStore
from smart_dispatch.lists.base import ListStore
from smart_dispatch.preferences.base import PreferenceStore
from smart_dispatch.preferences.memory import MemoryPreferenceStore
from smart_dispatch.ratelimit.base import MemoryRateLimiter, RateLimiter
from smart_dispatch.user_state import UserStateReader


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

    async def close(self) -> None:
        for store in (self.counters, self.lists, self.behaviour, self.dispatches, self.inbox, self.decisions):
            await store.close()
        await self.preferences.close()


SCHEMES: tuple[str, ...] = ("memory", "redis", "rediss", "redis+cluster")


def stores_from_url(url: str, options: StoreOptions | None = None) -> Stores:
    """Build the stores for `url`. Unknown schemes raise `ConfigurationError` naming the known."""
    options = options or StoreOptions()
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from smart_dispatch.behaviour.memory import MemoryBehaviourStore
        from smart_dispatch.counters.memory import MemoryCounterStore
        from smart_dispatch.dispatch.memory_store import MemoryDispatchStore
        from smart_dispatch.inbox.memory import MemoryInboxStore
        from smart_dispatch.lists.memory import MemoryListStore

        lists, behaviour, preferences = MemoryListStore(), MemoryBehaviourStore(), MemoryPreferenceStore()
        return Stores(
            MemoryCounterStore(),
            lists,
            behaviour,
            MemoryDispatchStore(claim_timeout_s=options.claim_timeout_s),
            MemoryInboxStore(),
            UserStateReader(lists, behaviour, preferences),
            url,
            decisions=MemoryDecisionLog(options.decision_log_retention_s, options.decision_log_max_entries),
            preferences=preferences,
        )
    if scheme in ("redis", "rediss", "redis+cluster"):
        from smart_dispatch.redis_stores import redis_stores

        return redis_stores(url, options)
    raise ConfigurationError(f"unknown store URL scheme {scheme!r} in {url!r}; known: {', '.join(SCHEMES)}")
