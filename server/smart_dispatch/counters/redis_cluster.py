"""`reserve` on Redis Cluster when a request's caps live in two hash-slot groups.

One script call cannot span slots, so the contract is composed from per-group calls that are
each atomic: the user group `{u:<user>}` (all of a user's caps) and the global group `{g}`.

1. User group, mode "C": if no option holds the message in all its user caps (and no option is
   made of global caps only), evaluate the options' user caps and reserve the first that fits,
   all in this call. Otherwise only report the candidate repeats.
2. Candidates: the global group confirms, in option order, the first candidate whose global caps
   also hold the message (mode "D") -> a repeat, nothing consumed (2 calls). No confirmation ->
   not a repeat: evaluate the user caps (mode "E") and continue with 3.
3. The user group chose option j: the global group checks j's global caps and reserves them
   (mode "E"; options before j are sent as report-only so their usages and retry instants are
   complete). Refused -> undo j's user reservation (mode "U" restores each cap's former score, so
   a concurrent retry of the same message loses nothing) and go on with option j + 1.
4. No option fits its user caps -> one report-only call fetches the global usages.

Defer (base.py point 3). Each cap's count only falls as time passes, so option 0 has room at
max(user caps' earliest instant, global caps' earliest instant), found group by group. Each group
HOLDS option 0 at its earliest instant (a real, atomic reservation that concurrent decisions see
and avoid) while the other catches up, so a concurrent decision cannot take an instant a group
already holds and instants only move forward:

5. When no option fits its user caps, the call of 1 (or 2's mode "E") also records option 0 in its
   user caps at their earliest instant T (defer "a"); the call of 4, besides its report, records
   option 0's global caps at their earliest instant >= T (defer "m<T>").
6. Until both hold the same instant (or when 5 did not apply: from option 0's retry instant), the
   group holding the earlier instant moves its entries to its earliest instant >= the later one
   (mode "M", defer "m<floor>"; the member's own entries never count against it). Past
   `not_after_s`, or after `MAX_DEFER_ROUNDS`, both groups are undone (mode "U") and the outcome
   is a refusal.

A refused option with caps in both groups reports the earliest instant both have room: each
group's own earliest instant may fall in a gap the other group's caps fill, so the groups are
asked again, report-only, from the later of the two until they agree (`_joint_retry`).

For any sequence of calls the outcomes equal one server's (and MemoryCounterStore's); the
contract suite checks this step by step. Round trips when the caps span both groups:
- a decision, chosen or refused: 2; + up to 3 per option whose user caps fitted but whose global
  caps refused (undo, user "E" of the next options, global "E"), +1 (the undo) for the last one;
- a repeat: 2 (candidates, confirmation);
- defer: 2 when the user caps set the instant (the deferral rides on the calls of 1 and 4), 3 when
  the global caps set a later one (the user entries follow); 5 when option 0 was first admitted by
  its user caps then refused globally (undo, then 6 from scratch). Contention adds rounds of 6.
Caveats, all erring towards fewer or later sends:
- a concurrent decision may see a user-cap reservation, or a deferral held in one group, that is
  undone or moved a moment later;
- a call that times out between the two groups can leave its entries behind until their window
  passes; retrying the same message id completes the reservation instead of counting twice;
- a deferral that does not settle within `MAX_DEFER_ROUNDS` is reported as refused, undone.
The planned instant of the first call (`at`) is pinned for the next ones, so every cap records
the same score; `now_s` is the first node's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from smart_dispatch.counters.base import CapUsage, OptionOutcome, ReserveOutcome, ReserveRequest
from smart_dispatch.counters.redis_codec import (
    CANDIDATES,
    DEFER_RECORDED,
    REPEAT,
    Caps,
    Mode,
    Options,
    ScriptReply,
    instant,
)


class ScriptRunner(Protocol):
    """What the protocol needs of the store: one reserve.lua call (`RedisCounterStore.run_reserve`)."""

    async def run_reserve(
        self,
        request: ReserveRequest,
        options: Sequence[Caps],
        *,
        mode: Mode,
        eligible: Sequence[bool] | None = None,
        at_ms: int | None = None,
        eval_ok: bool = True,
        defer: str = "",
        restore: Sequence[int | None] = (),
    ) -> ScriptReply: ...


MAX_DEFER_ROUNDS = 16
"""Rounds of step 6 before a deferral gives up (a round: at most 2 round trips)."""

Hold = tuple[int, list[int | None], tuple[CapUsage, ...]]
"""Option 0's tentative deferral in one group: instant (ms), former scores (undo), usages there."""


def spans_slot_groups(options: Options) -> bool:
    """Whether the caps live in both Cluster slot groups (the user's and the global one)."""
    scopes = {cap.scope for caps in options for cap in caps}
    return len(scopes) > 1


async def reserve_split(store: ScriptRunner, request: ReserveRequest) -> ReserveOutcome:
    """The contract of `CounterStore.reserve` over the user and the global slot group (a request
    whose caps all live in one group is one ordinary call, see `RedisCounterStore.reserve`)."""
    user = [tuple(c for c in option if c.scope == "user") for option in request.options]
    glob = [tuple(c for c in option if c.scope != "user") for option in request.options]
    fold = "a" if request.defer and not request.dry_run else ""
    global_only = [not u and bool(g) for u, g in zip(user, glob, strict=True)]
    first = await store.run_reserve(request, user, mode="C", eval_ok=not any(global_only), defer=fold)
    if first.kind == CANDIDATES:
        repeat = await _confirm_repeat(store, request, first, glob, global_only)
        if repeat is not None:
            return repeat
        first = await store.run_reserve(request, user, mode="E", at_ms=first.at_ms, defer=fold)
    return await _evaluate(store, request, first, user, glob)


async def _confirm_repeat(
    store: ScriptRunner,
    request: ReserveRequest,
    first: ScriptReply,
    glob: list[Caps],
    global_only: list[bool],
) -> ReserveOutcome | None:
    candidates = [k for k, entry in enumerate(first.entries) if global_only[k] or entry is not None]
    # a candidate without global caps is proven by the user group alone; earlier ones need {g}
    upto = next((i for i, k in enumerate(candidates) if not glob[k]), len(candidates))
    if upto:
        ask = set(candidates[:upto])
        eligible = [k in ask for k in range(len(glob))]
        reply = await store.run_reserve(request, glob, mode="D", eligible=eligible, at_ms=first.at_ms)
        if reply.kind == REPEAT:
            assert reply.chosen is not None
            k = reply.chosen
            option = request.options[k]
            reserved = instant(first.scores[k]) if option[0].scope == "user" else reply.reserved_at_s
            merged = _merge(option, first.entries[k], reply.entries[0])
            return ReserveOutcome(first.now_s, k, (merged,), True, reserved)
    if upto < len(candidates):
        k = candidates[upto]
        merged = _merge(request.options[k], first.entries[k], None)
        return ReserveOutcome(first.now_s, k, (merged,), True, instant(first.scores[k]))
    return None


async def _evaluate(
    store: ScriptRunner,
    request: ReserveRequest,
    first: ScriptReply,
    user: list[Caps],
    glob: list[Caps],
) -> ReserveOutcome:
    now_s, at_ms, n = first.now_s, first.at_ms, len(request.options)
    evaluated: list[OptionOutcome] = []
    start, reply = 0, first
    while True:
        user_outcomes = list(reply.entries)
        end = n - 1 if reply.chosen is None else start + reply.chosen
        span = range(start, end + 1)
        glob_outcomes: list[OptionOutcome | None] = [None] * len(span)
        chosen_globally = reply.chosen is not None
        # step 5: the user group deferred option 0 (only the first call does); the global group
        # holds it at its earliest instant from there
        held = reply.defer_state == DEFER_RECORDED
        follow = f"m{reply.defer_at_ms}" if held and glob[0] else ""
        settled: ScriptReply | None = None
        if any(glob[k] for k in span) or follow:
            eligible = [False] * len(span)
            if reply.chosen is not None:
                eligible[-1] = True
            g = await store.run_reserve(
                request, glob[start : end + 1], mode="E", eligible=eligible, at_ms=at_ms, defer=follow
            )
            glob_outcomes[: len(g.entries)] = g.entries
            chosen_globally = g.chosen is not None
            settled = g
        if reply.chosen is not None and not chosen_globally and not request.dry_run and user[end]:
            # give back what the user group recorded; usages as if it never had
            undo = await store.run_reserve(
                request, [user[end]], mode="U", at_ms=at_ms, restore=reply.previous
            )
            user_outcomes[-1] = undo.entries[0]
        for k, user_outcome, glob_outcome in zip(span, user_outcomes, glob_outcomes, strict=True):
            merged = _merge(request.options[k], user_outcome, glob_outcome)
            deferring = k == 0 and request.defer and not request.dry_run  # settled later, if needed
            if not deferring:
                merged = await _joint(store, request, merged, user[k], glob[k])
            evaluated.append(merged)
        if reply.chosen is None:
            return await _refused(store, request, evaluated, at_ms, now_s, user, glob, reply, settled)
        if chosen_globally:
            if end > 0 and request.defer and not request.dry_run:  # option 0 was left to `_refused`
                evaluated[0] = await _joint(store, request, evaluated[0], user[0], glob[0])
            reserved = None if request.dry_run else at_ms / 1000
            return ReserveOutcome(now_s, end, tuple(evaluated), False, reserved)
        start = end + 1
        if start == n:
            return await _refused(store, request, evaluated, at_ms, now_s, user, glob, None, None)
        reply = await store.run_reserve(request, user[start:], mode="E", at_ms=at_ms)


async def _refused(
    store: ScriptRunner,
    request: ReserveRequest,
    evaluated: list[OptionOutcome],
    at_ms: int,
    now_s: float,
    user: list[Caps],
    glob: list[Caps],
    user_reply: ScriptReply | None,
    glob_reply: ScriptReply | None,
) -> ReserveOutcome:
    """No option fits: without `defer` that is the outcome, with it option 0 is deferred (and
    when that fails, option 0's retry instant is settled as `_evaluate` does the others')."""
    if not request.defer or request.dry_run:
        return ReserveOutcome(now_s, None, tuple(evaluated), False, None)

    async def refused() -> ReserveOutcome:
        settled = await _joint(store, request, evaluated[0], user[0], glob[0])
        return ReserveOutcome(now_s, None, (settled, *evaluated[1:]), False, None)

    groups = (user[0], glob[0])
    holds: list[Hold | None] = [None, None]
    if user_reply is not None and user_reply.defer_at_ms is not None:  # step 5 was tried
        if user_reply.defer_state != DEFER_RECORDED:
            return await refused()  # the user caps alone push it past not_after
        holds[0] = (user_reply.defer_at_ms, user_reply.previous, user_reply.deferred_usages)
        floor = user_reply.defer_at_ms
        if glob_reply is not None and glob_reply.defer_at_ms is not None:
            if glob_reply.defer_state != DEFER_RECORDED:  # the global caps: past not_after
                await _undo(store, request, at_ms, groups, holds)
                return await refused()
            holds[1] = (glob_reply.defer_at_ms, glob_reply.previous, glob_reply.deferred_usages)
            floor = max(floor, glob_reply.defer_at_ms)
    else:
        retry_s = evaluated[0].retry_at_s
        floor = at_ms if retry_s is None else round(retry_s * 1000)
    found = await _defer(store, request, at_ms, groups, floor, holds)
    if found is None:
        return await refused()
    return _deferred(request, evaluated, now_s, *found)


async def _defer(
    store: ScriptRunner,
    request: ReserveRequest,
    at_ms: int,
    groups: tuple[Caps, Caps],
    floor: int,
    holds: list[Hold | None],
) -> tuple[int, tuple[CapUsage, ...], tuple[CapUsage, ...]] | None:
    """Step 6: each group holds option 0 at its earliest instant >= `floor`, the later one raising
    the floor, until both hold it at the same instant: that instant and the usages there. None
    (nothing left recorded) after not_after or `MAX_DEFER_ROUNDS`."""
    for _ in range(MAX_DEFER_ROUNDS):
        for group, caps in enumerate(groups):
            hold = holds[group]
            if not caps or (hold is not None and hold[0] >= floor):
                continue
            moved = await store.run_reserve(request, [caps], mode="M", at_ms=at_ms, defer=f"m{floor}")
            if moved.defer_state != DEFER_RECORDED or moved.defer_at_ms is None:  # after not_after
                await _undo(store, request, at_ms, groups, holds)
                return None
            previous = moved.previous if hold is None else hold[1]
            holds[group] = (moved.defer_at_ms, previous, moved.deferred_usages)
            floor = max(floor, moved.defer_at_ms)
        user_hold, glob_hold = holds
        if all(not caps or (hold and hold[0] == floor) for caps, hold in zip(groups, holds, strict=True)):
            return floor, user_hold[2] if user_hold else (), glob_hold[2] if glob_hold else ()
    await _undo(store, request, at_ms, groups, holds)
    return None


async def _undo(
    store: ScriptRunner,
    request: ReserveRequest,
    at_ms: int,
    groups: tuple[Caps, Caps],
    holds: list[Hold | None],
) -> None:
    """Give back option 0's tentative deferral in every group that holds it."""
    for caps, hold in zip(groups, holds, strict=True):
        if caps and hold is not None:
            await store.run_reserve(request, [caps], mode="U", at_ms=at_ms, restore=hold[1])


def _deferred(
    request: ReserveRequest,
    evaluated: list[OptionOutcome],
    now_s: float,
    at_ms: int,
    user_usages: tuple[CapUsage, ...],
    glob_usages: tuple[CapUsage, ...],
) -> ReserveOutcome:
    at_s = at_ms / 1000
    option = request.options[0]
    first = _merge(
        option,
        OptionOutcome(False, user_usages, at_s) if user_usages else None,
        OptionOutcome(False, glob_usages, at_s) if glob_usages else None,
    )
    return ReserveOutcome(now_s, 0, (first, *evaluated[1:]), False, at_s, deferred=True)


async def _joint(
    store: ScriptRunner, request: ReserveRequest, outcome: OptionOutcome, user: Caps, glob: Caps
) -> OptionOutcome:
    """A refused option whose caps are in both groups, with its retry instant made the earliest
    one with room in both (`_joint_retry`); any other outcome as it is."""
    if outcome.retry_at_s is None or not user or not glob:
        return outcome
    joint = await _joint_retry(store, request, user, glob, round(outcome.retry_at_s * 1000))
    return replace(outcome, retry_at_s=joint / 1000)


async def _joint_retry(
    store: ScriptRunner, request: ReserveRequest, user: Caps, glob: Caps, floor: int
) -> int:
    """The earliest instant >= `floor` with room in both groups (each group's own earliest
    instant may be a gap the other group's caps fill): each group, report-only, from the later
    of their instants until both agree. As `_defer`, but nothing is recorded."""
    for _ in range(MAX_DEFER_ROUNDS):
        moved = False
        for caps in (user, glob):
            report = await store.run_reserve(request, [caps], mode="E", eligible=[False], at_ms=floor)
            entry = report.entries[0]
            retry = entry.retry_at_s if entry is not None else None
            if retry is not None and round(retry * 1000) > floor:
                floor, moved = round(retry * 1000), True
        if not moved:
            return floor
    return floor


def _merge(option: Caps, user: OptionOutcome | None, glob: OptionOutcome | None) -> OptionOutcome:
    """Rejoin the two groups' views of one option, caps back in the option's order."""
    user_usages = iter(user.usages if user else ())
    glob_usages = iter(glob.usages if glob else ())
    usages = tuple(next(user_usages) if cap.scope == "user" else next(glob_usages) for cap in option)
    allowed = (user is None or user.allowed) and (glob is None or glob.allowed)
    retries = [o.retry_at_s for o in (user, glob) if o is not None and o.retry_at_s is not None]
    return OptionOutcome(allowed, usages, max(retries) if retries else None)
