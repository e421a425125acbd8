"""The frequency-cap contract every counter store honours.

A cap is "at most `limit` sends in ANY window of `window_s` seconds" (an exact rolling window,
not calendar buckets). Each cap keeps the message ids it counted with their planned send instant
as score. For one decision the pipeline hands the store its candidate channels in order (each with
the caps that apply to it); the store, in ONE atomic step (one round trip when remote):

1. If the message id is already counted under every cap of some option, the call is a repeat:
   nothing is consumed and that option is returned as chosen (`duplicate=True`).
2. Otherwise each option is checked in order; the first whose caps ALL have room at the planned
   instant is reserved (unless `dry_run`) and returned as `chosen`. Later options are not looked
   at. No option fits -> `chosen is None`, every option's `retry_at_s` says when it would fit.
3. With `defer`, when no option fits, option 0 is reserved at its `retry_at_s` instead (the
   earliest instant all its caps have room, found and taken in the same atomic step, so
   concurrent deferrals never collide) unless that is after `not_after_s`: `chosen == 0`,
   `deferred == True`, `reserved_at_s` the deferred instant. Not with `dry_run`.

Counting at instant `t` includes every entry scored after `t - window_s`, also entries scheduled
in the future, so a deferred send already occupies its slot. The earliest instant a full cap has
room again is `sorted_scores[used - limit] + window`. Instants are kept as whole milliseconds.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

CapScope = Literal["user", "global"]


@dataclass(frozen=True, slots=True)
class CapSpec:
    """A declared cap. `channel=None` means the cap counts sends on every channel."""

    name: str
    limit: int
    window_s: float
    scope: CapScope = "user"
    channel: str | None = None

    def applies_to(self, channel: str) -> bool:
        return self.channel is None or self.channel == channel


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """`options` are the candidate channels' cap sets in order of preference; `at_s` is the
    planned send instant (epoch seconds), None for now. `now_s` is the request clock: the
    instant the store takes as now (windows, pruning, `at_s` None) instead of its own clock;
    expiry of stored state still follows the store's real clock, by the same durations."""

    user_id: str
    member: str
    options: tuple[tuple[CapSpec, ...], ...]
    at_s: float | None = None
    dry_run: bool = False
    defer: bool = False
    not_after_s: float | None = None
    now_s: float | None = None


@dataclass(frozen=True, slots=True)
class CapUsage:
    """One cap after the call: `used` counts entries in the window at the planned instant,
    including this message when it was reserved; `reset_at_s` is when the oldest counted entry
    leaves the window (None when the window is empty)."""

    cap: CapSpec
    used: int
    reset_at_s: float | None

    @property
    def remaining(self) -> int:
        return max(0, self.cap.limit - self.used)


@dataclass(frozen=True, slots=True)
class OptionOutcome:
    allowed: bool
    usages: tuple[CapUsage, ...]
    retry_at_s: float | None


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    """`now_s` is the store's clock; `options` holds the options evaluated, in order (up to and
    including the chosen one); `reserved_at_s` is the score of the reservation (the existing one
    on a repeat), None when nothing was or would be reserved."""

    now_s: float
    chosen: int | None
    options: tuple[OptionOutcome, ...]
    duplicate: bool
    reserved_at_s: float | None
    deferred: bool = False


class CounterStore(abc.ABC):
    """Atomic check-and-reserve of frequency caps. Implementations raise
    `StoreUnavailableError` when they cannot answer within their timeout."""

    @abc.abstractmethod
    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        """Check (and unless `dry_run`, record) the first option whose caps all have room, or
        with `defer` option 0 at the earliest instant it has room (see the module docstring)."""

    @abc.abstractmethod
    async def refund(self, user_id: str, member: str, caps: Sequence[CapSpec]) -> None:
        """Remove `member` from every cap in `caps` (a send that never happened)."""

    async def usage(self, user_id: str, caps: Sequence[CapSpec]) -> tuple[CapUsage, ...]:
        """How much of each cap `user_id` uses now (the user's own count for a user cap, the
        shared one for a global cap), for operators: a read that records nothing. Counts
        include sends planned for later, as `reserve` does.

        Every store answers it with a dry-run `reserve` of one option holding every cap, for a
        member no message can have (a blank id), so the numbers come from the same arithmetic
        (and, on Redis, the same script) as the decisions; one round trip."""
        if not caps:
            return ()
        options = (tuple(caps),)
        outcome = await self.reserve(ReserveRequest(user_id, _NO_MESSAGE, options, dry_run=True))
        return outcome.options[0].usages

    async def close(self) -> None:
        """Release connections. Default: nothing to release."""
        return None


#: The member of `usage`'s dry run: blank, which no message id is (decide/validate.py).
_NO_MESSAGE = " "


def to_ms(seconds: float) -> int:
    """Stores keep instants and windows as whole milliseconds, so that an instant that went
    through a `datetime` and back (microsecond precision) compares exactly."""
    return round(seconds * 1000)


#: Caps up to this limit (holding up to `GAP_ROWS` entries) are searched for the earliest free
#: instant gaps included; larger ones wait until enough entries left the window. As reserve.lua.
GAP_LIMIT, GAP_ROWS = 32, 64


def retry_at_ms(scores_ascending_ms: Sequence[int], limit: int, window_ms: int) -> int:
    """Earliest instant a full cap holding `scores_ascending_ms` has room for one more, once
    enough of them left the window (a gap between later entries is not looked for)."""
    return scores_ascending_ms[len(scores_ascending_ms) - limit] + window_ms


def has_room_ms(scores_ms: Sequence[int], limit: int, window_ms: int, t_ms: int, now_ms: int) -> bool:
    """Whether an entry at `t_ms` keeps every window that would hold it within `limit`: each
    window (y - window, y] with y from t to t + window holds fewer than `limit` of `scores_ms`
    (checked at y = t and at each entry in [t, t + window), where counts go up)."""

    def count(y: int) -> int:
        low = max(y, now_ms) - window_ms
        return sum(1 for s in scores_ms if low < s <= y)

    if count(t_ms) >= limit:
        return False
    return all(count(s) < limit for s in scores_ms if t_ms <= s < t_ms + window_ms)


def earliest_free_ms(caps: Sequence[tuple[Sequence[int], int, int]], at_ms: int, now_ms: int) -> int | None:
    """The earliest instant >= `at_ms` at which every cap (its other entries' scores, limit,
    window) has room, gaps between planned entries included; None when `at_ms` itself has.
    Candidates are `at_ms` and each instant an entry leaves its window: only then can room open."""
    if all(has_room_ms(scores, limit, window, at_ms, now_ms) for scores, limit, window in caps):
        return None
    leaving = sorted({s + window for scores, _, window in caps for s in scores if s + window > at_ms})
    for t in leaving:
        if all(has_room_ms(scores, limit, window, t, now_ms) for scores, limit, window in caps):
            return t
    raise AssertionError("once every entry left its window there is room")
