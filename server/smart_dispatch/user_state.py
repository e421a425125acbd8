"""What a decision reads about the person before the rules run: list memberships and behaviour,
in one store round trip where the store is remote."""

from __future__ import annotations

from dataclasses import dataclass

from smart_dispatch.behaviour.base import Behaviour, BehaviourStore
from smart_dispatch.lists.base import ListStore


@dataclass(frozen=True, slots=True)
class UserState:
    memberships: frozenset[str]
    behaviour: Behaviour


class UserStateReader:
    """Reads both stores one after the other: right for in-process stores, where a concurrent
    read would only add event-loop hops. Remote backends override `read` to pipeline."""

    def __init__(self, lists: ListStore, behaviour: BehaviourStore) -> None:
        self.lists = lists
        self.behaviour = behaviour

    async def read(self, user_id: str) -> UserState:
        """Raises `StoreUnavailableError` when a store cannot answer in time."""
        return UserState(await self.lists.memberships(user_id), await self.behaviour.get(user_id))
