"""Provider rate limits: `rate: 100/s` (and `burst`) per provider in the providers file, shared by
every sidecar on Redis.

A GCRA (generic cell rate algorithm, a token bucket kept as one timestamp): with the emission
interval T = 1 / rate and a tolerance of `burst` - 1 intervals, a send at `now` may go at
`max(now, TAT - tolerance)`, and the theoretical arrival time TAT moves to `max(TAT, then) + T`.
`reserve` says how long a send waits for its slot, and takes the slot only when that wait is at
most `max_wait_s`: a longer wait is the caller's cue to come back later (the sender pool then
reschedules the message instead of holding a sender). The memory store is the reference; Redis
does the same in one script (`gcra.lua`, Redis TIME).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable


class RateLimiter(abc.ABC):
    @abc.abstractmethod
    async def reserve(self, key: str, rate_per_s: float, burst: int, max_wait_s: float) -> float:
        """Seconds until a send under `key` may go (0: now); the slot is taken when that is at
        most `max_wait_s`."""


class MemoryRateLimiter(RateLimiter):
    """Per process (`memory://`): each sidecar limits its own sends."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}

    async def reserve(self, key: str, rate_per_s: float, burst: int, max_wait_s: float) -> float:
        now = self._clock()
        interval = 1.0 / rate_per_s
        tat = self._tat.get(key, now)
        slot = max(now, tat - interval * (burst - 1))
        if slot - now <= max_wait_s:
            self._tat[key] = max(tat, slot) + interval
        return slot - now
