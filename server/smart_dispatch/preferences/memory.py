"""The embedded preference store (`memory://`): preferences in this process, lost on restart."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from smart_dispatch.preferences.base import (
    NO_PREFERENCES,
    Consent,
    Preferences,
    PreferenceStore,
    merged,
    with_consent,
    with_invalid_address,
)


class MemoryPreferenceStore(PreferenceStore):
    def __init__(self) -> None:
        self._people: dict[str, Preferences] = {}

    async def get(self, user_id: str) -> Preferences:
        return self._people.get(user_id, NO_PREFERENCES)

    async def update(
        self, user_id: str, preferences: Preferences, paths: Collection[str], at: datetime
    ) -> Preferences:
        stored = self._people[user_id] = merged(await self.get(user_id), preferences, paths, at)
        return stored

    async def set_consent(self, user_id: str, consent: Consent, at: datetime) -> Preferences:
        stored = self._people[user_id] = with_consent(await self.get(user_id), consent, at)
        return stored

    async def mark_invalid_address(self, user_id: str, channel: str, digest: str) -> None:
        self._people[user_id] = with_invalid_address(await self.get(user_id), channel, digest)
