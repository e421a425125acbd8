"""In-process `Stores` for `stores_from_url` (`memory://`): nothing is shared between processes
and nothing outlives the process."""

from __future__ import annotations

from smart_dispatch.behaviour.memory import MemoryBehaviourStore
from smart_dispatch.counters.memory import MemoryCounterStore
from smart_dispatch.decisionlog.memory import MemoryDecisionLog
from smart_dispatch.dispatch.memory_store import MemoryDispatchStore
from smart_dispatch.inbox.memory import MemoryInboxStore
from smart_dispatch.lists.memory import MemoryListStore
from smart_dispatch.preferences.memory import MemoryPreferenceStore
from smart_dispatch.stores.base import StoreOptions, Stores
from smart_dispatch.user_state import UserStateReader


def memory_stores(url: str, options: StoreOptions) -> Stores:
    """Every store in memory; the user-state reader reads the list, behaviour and preference
    stores of this bundle."""
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
