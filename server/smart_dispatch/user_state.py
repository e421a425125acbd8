"""What a decision reads about the person before the rules run: list memberships, behaviour and
preferences, in one store round trip where the store is remote."""

from __future__ import annotations

from dataclasses import dataclass

from smart_dispatch.behaviour.base import Behaviour, BehaviourStore
from smart_dispatch.lists.base import ListStore
from smart_dispatch.preferences.base import NO_PREFERENCES, Preferences, PreferenceStore


@dataclass(frozen=True, slots=True)
class UserState:
    memberships: frozenset[str]
    behaviour: Behaviour
    preferences: Preferences = NO_PREFERENCES


class UserStateReader:
    """Reads the stores one after the other: right for in-process stores, where a concurrent
    read would only add event-loop hops. Remote backends override `read` to pipeline. Without
    a preference store every person reads as having no preferences."""

    def __init__(
        self, lists: ListStore, behaviour: BehaviourStore, preferences: PreferenceStore | None = None
    ) -> None:
        self.lists = lists
        self.behaviour = behaviour
        self.preferences = preferences

    async def read(self, user_id: str) -> UserState:
        """Raises `StoreUnavailableError` when a store cannot answer in time."""
        memberships = await self.lists.memberships(user_id)
        behaviour = await self.behaviour.get(user_id)
        if self.preferences is None:
            return UserState(memberships, behaviour)
        return UserState(memberships, behaviour, await self.preferences.get(user_id))
