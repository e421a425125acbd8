"""The embedded list store (`memory://`): membership in this process, seeded from settings."""

from __future__ import annotations

from collections.abc import Iterable

from smart_dispatch.lists.base import LIST_NAMES, ListName, ListStore


class MemoryListStore(ListStore):
    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self._members: dict[str, set[str]] = {"allow": set(allow), "deny": set(deny)}

    async def add(self, list_name: ListName, user_id: str) -> bool:
        members = self._members[list_name]
        added = user_id not in members
        members.add(user_id)
        return added

    async def remove(self, list_name: ListName, user_id: str) -> bool:
        members = self._members[list_name]
        present = user_id in members
        members.discard(user_id)
        return present

    async def memberships(self, user_id: str) -> frozenset[str]:
        return frozenset(name for name in LIST_NAMES if user_id in self._members[name])
