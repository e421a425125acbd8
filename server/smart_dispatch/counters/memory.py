"""The embedded counter store (`memory://`): the same contract as Redis, in this process.

Not shared between processes and lost on restart; the default so `serve` runs with no Redis.
Atomic because `reserve` never awaits while it reads and writes. Instants are whole ms.

Memory: a cap's entries (message id -> planned instant, one small dict per user and cap, which
the cyclic GC does not track) are kept while they are in the cap's window. Entries that left it
are dropped when their cap is next read, and by a sweep over every user and cap, on the request
clock, once a quarter as many keys were made as the previous sweep left (at least
`SWEEP_EVERY`): amortised O(1) per reserve, at most the keys of one window and a quarter (or
`SWEEP_EVERY`) more, and the keys of users who went away are removed with their last entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from smart_dispatch.counters.base import (
    GAP_LIMIT,
    GAP_ROWS,
    CapSpec,
    CapUsage,
    CounterStore,
    OptionOutcome,
    ReserveOutcome,
    ReserveRequest,
    earliest_free_ms,
    retry_at_ms,
    to_ms,
)

#: A sweep runs once a quarter as many keys were made as the previous one left, never sooner.
SWEEP_EVERY = 10_000


class MemoryCounterStore(CounterStore):
    def __init__(self, clock: Callable[[], float] = time.time, *, sweep_every: int = SWEEP_EVERY) -> None:
        self._clock = clock
        self._sweep_every = max(1, sweep_every)
        # (scope key, cap name) -> message id -> planned send instant (ms)
        self._entries: dict[tuple[str, str], dict[str, int]] = {}
        self._windows_ms: dict[str, int] = {}  # cap name -> its window (the latest seen)
        self._created = 0  # keys made since the last sweep, which runs after `_sweep_after` of them
        self._sweep_after = self._sweep_every

    def _live(self, option: Sequence[CapSpec], user_id: str, now_ms: int) -> list[dict[str, int]]:
        """The entries of each cap of `option` (created when missing), expired ones dropped."""
        out = []
        windows = self._windows_ms
        for cap in option:
            key = _key(cap, user_id)
            window_ms = windows[cap.name] = to_ms(cap.window_s)
            entries = self._entries.get(key)
            if entries is None:
                entries = self._entries[key] = {}
                self._created += 1
            elif entries:
                _expire(entries, now_ms - window_ms)
            out.append(entries)
        return out

    def sweep(self, now_s: float | None = None) -> int:
        """Drop the entries that left their window as of `now_s` (default: the store's clock),
        and the keys left empty (users who went away); returns how many keys went."""
        now_ms = to_ms(self._clock() if now_s is None else now_s)
        windows = self._windows_ms
        gone = []
        for key, entries in self._entries.items():
            _expire(entries, now_ms - windows.get(key[1], 0))
            if not entries:
                gone.append(key)
        for key in gone:
            del self._entries[key]
        self._created = 0
        self._sweep_after = max(self._sweep_every, len(self._entries) // 4)
        return len(gone)

    def sizes(self) -> dict[str, int]:
        """Keys (user x cap, global caps) and the entries they hold."""
        return {"keys": len(self._entries), "entries": sum(map(len, self._entries.values()))}

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        now_ms = to_ms(self._clock() if request.now_s is None else request.now_s)
        outcome = self._reserve(request, now_ms)
        if self._created >= self._sweep_after:  # after the reservation: its keys are not empty
            self.sweep(now_ms / 1000)
        return outcome

    def _reserve(self, request: ReserveRequest, now_ms: int) -> ReserveOutcome:
        at_ms = now_ms if request.at_s is None else to_ms(request.at_s)
        sets = [self._live(option, request.user_id, now_ms) for option in request.options]

        for index, option in enumerate(request.options):
            if option and all(request.member in entries for entries in sets[index]):
                usages = _usages(option, sets[index], at_ms)
                reserved_ms = sets[index][0][request.member]
                return ReserveOutcome(
                    now_ms / 1000, index, (OptionOutcome(True, usages, None),), True, reserved_ms / 1000
                )

        evaluated: list[OptionOutcome] = []
        for index, option in enumerate(request.options):
            retry_ms = _refusal(option, sets[index], request.member, at_ms, now_ms)
            if retry_ms:
                evaluated.append(OptionOutcome(False, _usages(option, sets[index], at_ms), retry_ms / 1000))
                continue
            if not request.dry_run:
                for entries in sets[index]:
                    entries[request.member] = at_ms
            evaluated.append(OptionOutcome(True, _usages(option, sets[index], at_ms), None))
            reserved = None if request.dry_run else at_ms / 1000
            return ReserveOutcome(now_ms / 1000, index, tuple(evaluated), False, reserved)
        if request.defer and not request.dry_run and evaluated:
            retry_s = evaluated[0].retry_at_s
            assert retry_s is not None
            if request.not_after_s is None or retry_s <= request.not_after_s:
                retry_ms = to_ms(retry_s)
                for entries in sets[0]:
                    entries[request.member] = retry_ms
                usages = _usages(request.options[0], sets[0], retry_ms)
                deferred = (OptionOutcome(False, usages, retry_s), *evaluated[1:])
                return ReserveOutcome(now_ms / 1000, 0, deferred, False, retry_s, deferred=True)
        return ReserveOutcome(now_ms / 1000, None, tuple(evaluated), False, None)

    async def refund(self, user_id: str, member: str, caps: Sequence[CapSpec]) -> None:
        for cap in caps:
            self._entries.get(_key(cap, user_id), {}).pop(member, None)


def _key(cap: CapSpec, user_id: str) -> tuple[str, str]:
    return (user_id if cap.scope == "user" else "", cap.name)


def _expire(entries: dict[str, int], horizon_ms: int) -> None:
    if not entries or min(entries.values()) > horizon_ms:  # the common case: nothing expired
        return
    for member in [m for m, score in entries.items() if score <= horizon_ms]:
        del entries[member]


def _refusal(
    option: Sequence[CapSpec], sets: Sequence[dict[str, int]], member: str, at_ms: int, now_ms: int
) -> int:
    """0 when every cap of the option has room for `member` at `at_ms`, else the earliest instant
    they all have (gaps included for small caps, as reserve.lua)."""
    others = [sorted(s for m, s in entries.items() if m != member) for entries in sets]
    if all(
        cap.limit <= GAP_LIMIT and len(scores) <= GAP_ROWS for cap, scores in zip(option, others, strict=True)
    ):
        caps = [(scores, cap.limit, to_ms(cap.window_s)) for cap, scores in zip(option, others, strict=True)]
        return earliest_free_ms(caps, at_ms, now_ms) or 0
    retry_ms = 0
    for cap, scores in zip(option, others, strict=True):
        window_ms = to_ms(cap.window_s)
        counted = [s for s in scores if s > at_ms - window_ms]
        if len(counted) >= cap.limit:
            retry_ms = max(retry_ms, retry_at_ms(counted, cap.limit, window_ms))
    return retry_ms


def _usages(option: Sequence[CapSpec], sets: Sequence[dict[str, int]], at_ms: int) -> tuple[CapUsage, ...]:
    usages = []
    for cap, entries in zip(option, sets, strict=True):
        window_ms = to_ms(cap.window_s)
        scores = [s for s in entries.values() if s > at_ms - window_ms]
        reset = (min(scores) + window_ms) / 1000 if scores else None
        usages.append(CapUsage(cap, len(scores), reset))
    return tuple(usages)
