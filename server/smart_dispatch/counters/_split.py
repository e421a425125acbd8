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

For any sequence of calls the outcomes equal one server's (and MemoryCounterStore's); the
contract suite checks this step by step. Caveats, all erring towards fewer sends:
- a concurrent decision may see a user-cap reservation that is undone a moment later (refused);
- a call that times out between the two groups can leave its user-cap entries behind until their
  window passes; retrying the same message id completes the reservation instead of counting twice.
Usual cost: 2 round trips. The planned instant of the first call (`at`) is pinned for the next
ones, so every cap records the same score; `now_s` is the first node's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from smart_dispatch.counters.base import CapSpec, OptionOutcome, ReserveOutcome, ReserveRequest
from smart_dispatch.counters.redis import (
    CANDIDATES,
    REPEAT,
    ScriptReply,
    instant,
    option_outcome,
    outcome_of,
)

if TYPE_CHECKING:
    from smart_dispatch.counters.redis import RedisCounterStore

Caps = tuple[CapSpec, ...]


async def reserve_split(store: RedisCounterStore, request: ReserveRequest) -> ReserveOutcome:
    """The contract of `CounterStore.reserve` over the user and the global slot group."""
    user = [tuple(c for c in option if c.scope == "user") for option in request.options]
    glob = [tuple(c for c in option if c.scope != "user") for option in request.options]
    if not any(glob) or not any(user):  # one slot group: a single call, as on one server
        return outcome_of(await store.run_reserve(request, request.options, mode="F"), request.options)

    global_only = [not u and bool(g) for u, g in zip(user, glob, strict=True)]
    first = await store.run_reserve(request, user, mode="C", eval_ok=not any(global_only))
    if first.kind == CANDIDATES:
        repeat = await _confirm_repeat(store, request, first, user, glob, global_only)
        if repeat is not None:
            return repeat
        first = await store.run_reserve(request, user, mode="E", at_ms=first.at_ms)
    return await _evaluate(store, request, first, user, glob)


async def _confirm_repeat(
    store: RedisCounterStore,
    request: ReserveRequest,
    first: ScriptReply,
    user: list[Caps],
    glob: list[Caps],
    global_only: list[bool],
) -> ReserveOutcome | None:
    candidates = [k for k, entry in enumerate(first.entries) if global_only[k] or int(entry[0])]
    # a candidate without global caps is proven by the user group alone; earlier ones need {g}
    upto = next((i for i, k in enumerate(candidates) if not glob[k]), len(candidates))
    if upto:
        ask = set(candidates[:upto])
        eligible = [k in ask for k in range(len(glob))]
        reply = await store.run_reserve(request, glob, mode="D", eligible=eligible, at_ms=first.at_ms)
        if reply.kind == REPEAT:
            assert reply.chosen is not None
            k = reply.chosen
            user_part = _user_entry(user[k], first.entries[k])
            glob_part = option_outcome(glob[k], reply.entries[0])
            option = request.options[k]
            reserved = instant(first.entries[k][1]) if option[0].scope == "user" else reply.reserved_at_s
            merged = _merge(option, user_part, glob_part)
            return ReserveOutcome(first.now_s, k, (merged,), True, reserved)
    if upto < len(candidates):
        k = candidates[upto]
        merged = _merge(request.options[k], _user_entry(user[k], first.entries[k]), None)
        return ReserveOutcome(first.now_s, k, (merged,), True, instant(first.entries[k][1]))
    return None


async def _evaluate(
    store: RedisCounterStore,
    request: ReserveRequest,
    first: ScriptReply,
    user: list[Caps],
    glob: list[Caps],
) -> ReserveOutcome:
    now_s, at_ms, n = first.now_s, first.at_ms, len(request.options)
    evaluated: list[OptionOutcome] = []
    start, reply = 0, first
    while True:
        user_outcomes = [
            option_outcome(caps, e) for caps, e in zip(user[start:], reply.entries, strict=False)
        ]
        end = n - 1 if reply.chosen is None else start + reply.chosen
        span = range(start, end + 1)
        glob_outcomes: list[OptionOutcome | None] = [None] * len(span)
        chosen_globally = reply.chosen is not None
        if any(glob[k] for k in span):
            eligible = [False] * len(span)
            if reply.chosen is not None:
                eligible[-1] = True
            g = await store.run_reserve(
                request, glob[start : end + 1], mode="E", eligible=eligible, at_ms=at_ms
            )
            glob_outcomes[:] = [
                option_outcome(c, e) for c, e in zip(glob[start : end + 1], g.entries, strict=False)
            ]
            chosen_globally = g.chosen is not None
        if reply.chosen is not None and not chosen_globally and not request.dry_run and user[end]:
            # give back what the user group recorded; usages as if it never had
            undo = await store.run_reserve(
                request, [user[end]], mode="U", at_ms=at_ms, restore=reply.previous
            )
            user_outcomes[-1] = option_outcome(user[end], undo.entries[0])
        for k, user_outcome, glob_outcome in zip(span, user_outcomes, glob_outcomes, strict=True):
            evaluated.append(_merge(request.options[k], user_outcome, glob_outcome))
        if reply.chosen is None:
            return ReserveOutcome(now_s, None, tuple(evaluated), False, None)
        if chosen_globally:
            reserved = None if request.dry_run else at_ms / 1000
            return ReserveOutcome(now_s, end, tuple(evaluated), False, reserved)
        start = end + 1
        if start == n:
            return ReserveOutcome(now_s, None, tuple(evaluated), False, None)
        reply = await store.run_reserve(request, user[start:], mode="E", at_ms=at_ms)


def _user_entry(caps: Caps, entry: Sequence[object]) -> OptionOutcome:
    """A mode "C" candidate entry `{ holds, score, usages }` as an allowed outcome."""
    return option_outcome(caps, (1, None, entry[2]))


def _merge(option: Caps, user: OptionOutcome | None, glob: OptionOutcome | None) -> OptionOutcome:
    """Rejoin the two groups' views of one option, caps back in the option's order."""
    user_usages = iter(user.usages if user else ())
    glob_usages = iter(glob.usages if glob else ())
    usages = tuple(next(user_usages) if cap.scope == "user" else next(glob_usages) for cap in option)
    allowed = (user is None or user.allowed) and (glob is None or glob.allowed)
    retries = [o.retry_at_s for o in (user, glob) if o is not None and o.retry_at_s is not None]
    return OptionOutcome(allowed, usages, max(retries) if retries else None)
