"""The population prior as a decision reads it: a copy of the store's population counts,
refreshed in the background every `refresh_s` seconds, so no decision waits for it (and no
decision costs a store round trip for it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from smart_dispatch.behaviour.base import BehaviourStore, Population
from smart_dispatch.errors import StoreError

log = logging.getLogger(__name__)


class PriorCache:
    def __init__(
        self, store: BehaviourStore, refresh_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._clock = clock
        self._population = Population()
        self._fresh_until = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None

    def current(self) -> Population:
        """The latest copy; starts a refresh when it is older than `refresh_s` (call from the
        event loop)."""
        if self._clock() >= self._fresh_until and self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        return self._population

    async def refresh(self) -> Population:
        """Read the population now (tests, start-up)."""
        await self._refresh()
        return self._population

    async def _refresh(self) -> None:
        try:
            self._population = await self._store.population()
            self._fresh_until = self._clock() + self._refresh_s
        except StoreError as exc:  # keep the last copy; try again after a while
            log.warning("population prior not refreshed: %s", exc)
            self._fresh_until = self._clock() + self._refresh_s
        finally:
            self._refreshing = None

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
