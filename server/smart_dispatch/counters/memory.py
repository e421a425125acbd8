"""The embedded counter store (`memory://`): the same contract as Redis, in this process.

Not shared between processes and lost on restart; the default so `serve` runs with no Redis.
Atomic because `reserve` never awaits while it reads and writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from smart_dispatch.counters.base import (
    CapSpec,
    CapUsage,
    CounterStore,
    OptionOutcome,
    ReserveOutcome,
    ReserveRequest,
    retry_at,
)


class MemoryCounterStore(CounterStore):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # (scope key, cap name) -> message id -> planned send instant
        self._entries: dict[tuple[str, str], dict[str, float]] = {}

    @staticmethod
    def _key(cap: CapSpec, user_id: str) -> tuple[str, str]:
        return (user_id if cap.scope == "user" else "", cap.name)

    def _live(self, cap: CapSpec, user_id: str, now_s: float) -> dict[str, float]:
        key = self._key(cap, user_id)
        entries = self._entries.get(key)
        if entries is None:
            return self._entries.setdefault(key, {})
        expired = [m for m, score in entries.items() if score <= now_s - cap.window_s]
        for member in expired:
            del entries[member]
        return entries

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        now_s = self._clock()
        at_s = now_s if request.at_s is None else request.at_s
        sets = [[self._live(cap, request.user_id, now_s) for cap in option] for option in request.options]

        for index, option in enumerate(request.options):
            if option and all(request.member in entries for entries in sets[index]):
                reserved_at = sets[index][0][request.member]
                usages = tuple(_usage(cap, e, at_s) for cap, e in zip(option, sets[index], strict=True))
                return ReserveOutcome(now_s, index, (OptionOutcome(True, usages, None),), True, reserved_at)

        evaluated: list[OptionOutcome] = []
        for index, option in enumerate(request.options):
            counted = [
                sorted(s for m, s in entries.items() if s > at_s - cap.window_s and m != request.member)
                for cap, entries in zip(option, sets[index], strict=True)
            ]
            full = [
                (cap, scores) for cap, scores in zip(option, counted, strict=True) if len(scores) >= cap.limit
            ]
            if full:
                when = max(retry_at(scores, cap.limit, cap.window_s) for cap, scores in full)
                usages = tuple(_usage(cap, e, at_s) for cap, e in zip(option, sets[index], strict=True))
                evaluated.append(OptionOutcome(False, usages, when))
                continue
            if not request.dry_run:
                for entries in sets[index]:
                    entries[request.member] = at_s
            usages = tuple(_usage(cap, e, at_s) for cap, e in zip(option, sets[index], strict=True))
            evaluated.append(OptionOutcome(True, usages, None))
            reserved = None if request.dry_run else at_s
            return ReserveOutcome(now_s, index, tuple(evaluated), False, reserved)
        return ReserveOutcome(now_s, None, tuple(evaluated), False, None)

    async def refund(self, user_id: str, member: str, caps: Sequence[CapSpec]) -> None:
        for cap in caps:
            self._entries.get(self._key(cap, user_id), {}).pop(member, None)


def _usage(cap: CapSpec, entries: dict[str, float], at_s: float) -> CapUsage:
    scores = [s for s in entries.values() if s > at_s - cap.window_s]
    return CapUsage(cap, len(scores), min(scores) + cap.window_s if scores else None)
