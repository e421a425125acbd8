"""The CounterStore contract (counters/base.py), one suite on memory, one Redis and a Cluster.

Planned instants (`at_s`) are offsets from `t0`, a round instant near the real clock: stores drop
entries older than their own now minus the window, so instants far from now would expire at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from smart_dispatch.counters.base import CapUsage, CounterStore, OptionOutcome

from tests.contract.helpers import (
    DAY,
    HOUR,
    cap,
    crowded_windows,
    replay_against_reference,
    reserve,
    used,
)


@pytest.fixture
def t0() -> float:
    return float(int(time.time()))


async def test_cap_allows_its_limit_then_refuses_until_oldest_leaves(counter_store: CounterStore, t0: float):
    sms_day = cap("sms_day", 3, DAY)
    for i in range(3):
        allowed = await reserve(counter_store, f"m{i}", [sms_day], at_s=t0 + i)
        assert (allowed.chosen, allowed.duplicate, allowed.reserved_at_s) == (0, False, t0 + i)
        assert allowed.options == (OptionOutcome(True, (CapUsage(sms_day, i + 1, t0 + DAY),), None),)

    refused = await reserve(counter_store, "m3", [sms_day], at_s=t0 + 10)

    assert (refused.chosen, refused.duplicate, refused.reserved_at_s) == (None, False, None)
    assert refused.options == (OptionOutcome(False, (CapUsage(sms_day, 3, t0 + DAY),), t0 + DAY),)
    assert refused.options[0].usages[0].remaining == 0


async def test_retry_at_follows_the_store_clock_without_planned_instant(counter_store: CounterStore):
    sms_day = cap("sms_day", 3, DAY)
    before = time.time()
    allowed = [await reserve(counter_store, f"m{i}", [sms_day]) for i in range(3)]
    refused = await reserve(counter_store, "m3", [sms_day])

    for outcome in allowed:
        assert outcome.chosen == 0
        assert outcome.reserved_at_s == outcome.now_s
    assert before - 1 < allowed[0].now_s <= refused.now_s < time.time() + 1
    assert refused.chosen is None
    assert refused.options[0].retry_at_s == allowed[0].reserved_at_s + DAY


async def test_repeat_never_consumes_twice_and_keeps_the_original_instant(
    counter_store: CounterStore, t0: float
):
    hourly = cap("sms_hour", 1, HOUR)
    await reserve(counter_store, "m1", [hourly], at_s=t0)

    repeat = await reserve(counter_store, "m1", [hourly], at_s=t0 + 60)

    assert (repeat.chosen, repeat.duplicate, repeat.reserved_at_s) == (0, True, t0)
    assert repeat.options == (OptionOutcome(True, (CapUsage(hourly, 1, t0 + HOUR),), None),)
    assert (await reserve(counter_store, "m2", [hourly], at_s=t0 + 60)).chosen is None


async def test_repeat_names_the_option_that_holds_the_message(counter_store: CounterStore, t0: float):
    sms = [cap("sms_hour", 1, HOUR, channel="sms")]
    email = [cap("email_hour", 5, HOUR, channel="email"), cap("all_day", 10, DAY)]
    await reserve(counter_store, "m0", sms, email, at_s=t0)
    first = await reserve(counter_store, "m1", sms, email, at_s=t0 + 1)
    assert first.chosen == 1

    repeat = await reserve(counter_store, "m1", sms, email, at_s=t0 + 2)

    assert (repeat.chosen, repeat.duplicate, repeat.reserved_at_s) == (1, True, t0 + 1)
    assert len(repeat.options) == 1 and repeat.options[0].allowed
    assert [u.used for u in repeat.options[0].usages] == [1, 1]


async def test_dry_run_consumes_nothing(counter_store: CounterStore, t0: float):
    single = cap("one", 1, HOUR)

    probe = await reserve(counter_store, "m1", [single], at_s=t0, dry_run=True)

    assert (probe.chosen, probe.duplicate, probe.reserved_at_s) == (0, False, None)
    assert probe.options[0].usages[0].used == 0
    assert (await reserve(counter_store, "m2", [single], at_s=t0)).chosen == 0
    refused_probe = await reserve(counter_store, "m3", [single], at_s=t0, dry_run=True)
    assert refused_probe.chosen is None and refused_probe.options[0].retry_at_s == t0 + HOUR


async def test_falls_through_to_the_next_option_when_the_first_is_full(
    counter_store: CounterStore, t0: float
):
    sms = [cap("sms_hour", 1, HOUR, channel="sms")]
    email = [cap("email_hour", 5, HOUR, channel="email")]
    assert (await reserve(counter_store, "m1", sms, email, at_s=t0)).chosen == 0

    second = await reserve(counter_store, "m2", sms, email, at_s=t0 + 1)

    assert second.chosen == 1 and second.reserved_at_s == t0 + 1
    assert second.options == (
        OptionOutcome(False, (CapUsage(sms[0], 1, t0 + HOUR),), t0 + HOUR),
        OptionOutcome(True, (CapUsage(email[0], 1, t0 + 1 + HOUR),), None),
    )


async def test_all_caps_or_nothing(counter_store: CounterStore, t0: float):
    hourly, daily = cap("hour", 1, HOUR), cap("day", 3, DAY)
    assert (await reserve(counter_store, "m1", [hourly, daily], at_s=t0)).chosen == 0

    refused = await reserve(counter_store, "m2", [hourly, daily], at_s=t0 + 60)

    assert refused.chosen is None
    assert refused.options == (
        OptionOutcome(False, (CapUsage(hourly, 1, t0 + HOUR), CapUsage(daily, 1, t0 + DAY)), t0 + HOUR),
    )
    assert await used(counter_store, [daily], at_s=t0 + 60) == [1]  # the daily cap did not record m2
    later = await reserve(counter_store, "m2", [hourly, daily], at_s=t0 + HOUR + 1)
    assert later.chosen == 0 and [u.used for u in later.options[0].usages] == [1, 2]


async def test_refund_frees_the_slot(counter_store: CounterStore, t0: float):
    single, daily = cap("one", 1, HOUR), cap("day", 5, DAY)
    await reserve(counter_store, "m1", [single, daily], at_s=t0)
    assert (await reserve(counter_store, "m2", [single, daily], at_s=t0)).chosen is None

    await counter_store.refund("alice", "m1", [single, daily])
    await counter_store.refund("alice", "never-counted", [single, daily])

    assert await used(counter_store, [single, daily], at_s=t0) == [0, 0]
    assert (await reserve(counter_store, "m2", [single, daily], at_s=t0)).chosen == 0


async def test_global_caps_are_shared_across_users(counter_store: CounterStore, t0: float):
    promo = cap("promo_day", 2, DAY, scope="global")
    per_user = cap("user_day", 5, DAY)
    assert (await reserve(counter_store, "m1", [per_user, promo], user="alice", at_s=t0)).chosen == 0
    assert (await reserve(counter_store, "m2", [promo], user="bob", at_s=t0)).chosen == 0

    refused = await reserve(counter_store, "m3", [per_user, promo], user="carol", at_s=t0)

    assert refused.chosen is None
    assert refused.options[0].usages == (CapUsage(per_user, 0, None), CapUsage(promo, 2, t0 + DAY))
    assert await used(counter_store, [per_user], user="carol", at_s=t0) == [0]


async def test_usage_reads_what_each_cap_counts_now_and_records_nothing(
    counter_store: CounterStore, t0: float
):
    # Given alice's sends: one now, one planned in an hour (a user cap, a global cap, and a
    # high-volume global cap counted by the sliding-window counter on Redis)
    sms_day = cap("sms_day", 2, DAY)
    promo = cap("promo_day", 3, DAY, scope="global")
    bulk = cap("bulk_day", 5000, DAY, scope="global")
    for member, at_s in (("m1", t0), ("m2", t0 + HOUR)):
        assert (await reserve(counter_store, member, [sms_day, promo, bulk], at_s=at_s)).chosen == 0

    # When an operator reads the caps in use, for alice and for bob
    alice = await counter_store.usage("alice", [sms_day, promo, bulk])
    bob = await counter_store.usage("bob", [sms_day, promo])

    # Then the user cap is alice's own (the planned send included), the global ones are shared
    assert [(u.cap.name, u.used, u.remaining) for u in alice] == [
        ("sms_day", 2, 0),
        ("promo_day", 2, 1),
        ("bulk_day", 2, 4998),
    ]
    assert alice[0].reset_at_s == t0 + DAY
    assert [(u.used, u.reset_at_s) for u in bob] == [(0, None), (2, t0 + DAY)]
    assert await counter_store.usage("alice", []) == ()
    # and reading recorded nothing: alice's third send is refused, bob's first is not
    assert (await reserve(counter_store, "m3", [sms_day, promo], at_s=t0 + 2)).chosen is None
    assert (await reserve(counter_store, "m4", [sms_day, promo], user="bob", at_s=t0 + 2)).chosen == 0


async def test_user_caps_are_isolated_between_users(counter_store: CounterStore, t0: float):
    single = cap("one", 1, HOUR)
    assert (await reserve(counter_store, "m1", [single], user="alice", at_s=t0)).chosen == 0
    assert (await reserve(counter_store, "m2", [single], user="bob", at_s=t0)).chosen == 0
    assert (await reserve(counter_store, "m3", [single], user="alice", at_s=t0)).chosen is None


async def test_deferred_reservation_occupies_its_slot_now(counter_store: CounterStore, t0: float):
    hourly = cap("hour", 1, HOUR)
    deferred = await reserve(counter_store, "m1", [hourly], at_s=t0 + 1800)
    assert deferred.reserved_at_s == t0 + 1800

    now = await reserve(counter_store, "m2", [hourly], at_s=t0)

    assert now.chosen is None and now.options[0].retry_at_s == t0 + 1800 + HOUR


async def test_deferrals_queue_up_past_what_a_store_reads_in_one_go(counter_store: CounterStore, t0: float):
    """70 deferred entries (reserve.lua reads a small cap's set whole only up to 64): each next
    deferral still lands after all of them, and a repeat still finds its own."""
    hourly = cap("hour", 1, HOUR)
    for i in range(70):
        deferred = await reserve(counter_store, f"m{i}", [hourly], at_s=t0, defer=True)
        assert (deferred.chosen, deferred.reserved_at_s) == (0, t0 + i * HOUR)

    late = await reserve(counter_store, "late", [hourly], at_s=t0 + 60, defer=True)
    repeat = await reserve(counter_store, "m3", [hourly], at_s=t0 + 60, defer=True)

    assert (late.deferred, late.reserved_at_s) == (True, t0 + 70 * HOUR)
    assert late.options[0].usages == (CapUsage(hourly, 1, t0 + 71 * HOUR),)
    assert (repeat.duplicate, repeat.reserved_at_s) == (True, t0 + 3 * HOUR)


async def test_entries_leave_the_window(counter_store: CounterStore, t0: float):
    minute = cap("minute", 1, 60)
    await reserve(counter_store, "m1", [minute], at_s=t0)
    refused = await reserve(counter_store, "m2", [minute], at_s=t0 + 30)
    assert refused.options[0].retry_at_s == t0 + 60

    assert (await reserve(counter_store, "m2", [minute], at_s=t0 + 60)).chosen == 0


async def test_entries_expire_on_the_store_clock(counter_store: CounterStore):
    blink = cap("blink", 1, 0.3)
    assert (await reserve(counter_store, "m1", [blink])).chosen == 0
    assert (await reserve(counter_store, "m2", [blink])).chosen is None
    await asyncio.sleep(0.35)
    assert (await reserve(counter_store, "m2", [blink])).chosen == 0


async def test_options_without_caps(counter_store: CounterStore, t0: float):
    free = await reserve(counter_store, "m1", [], at_s=t0)
    assert (free.chosen, free.options, free.reserved_at_s) == (0, (OptionOutcome(True, (), None),), t0)
    nothing = await reserve(counter_store, "m2", at_s=t0)
    assert (nothing.chosen, nothing.options) == (None, ())


async def test_concurrent_reserves_never_exceed_the_limit(counter_store: CounterStore):
    three = cap("three", 3, HOUR)
    outcomes = await asyncio.gather(*(reserve(counter_store, f"m{i}", [three]) for i in range(50)))
    assert sum(o.chosen == 0 for o in outcomes) == 3


async def test_concurrent_reserves_across_users_respect_a_global_cap(counter_store: CounterStore):
    per_user, promo = cap("user_day", 10, DAY), cap("promo", 3, HOUR, scope="global")
    outcomes = await asyncio.gather(
        *(reserve(counter_store, f"m{i}", [per_user, promo], user=f"u{i % 7}") for i in range(50))
    )
    assert sum(o.chosen == 0 for o in outcomes) == 3
    totals = [(await used(counter_store, [per_user], user=f"u{i}", at_s=time.time()))[0] for i in range(7)]
    assert sum(totals) == 3  # refused decisions left nothing behind in user caps


async def test_concurrent_repeats_of_one_message_count_once(counter_store: CounterStore):
    three = cap("three", 3, HOUR)
    outcomes = await asyncio.gather(*(reserve(counter_store, "same", [three]) for _ in range(20)))
    assert all(o.chosen == 0 for o in outcomes)
    assert sum(not o.duplicate for o in outcomes) == 1
    assert await used(counter_store, [three], at_s=time.time()) == [1]


async def test_defer_records_at_the_retry_instant_and_the_next_goes_after_it(
    counter_store: CounterStore, t0: float
):
    daily = cap("day", 2, DAY)
    await reserve(counter_store, "m1", [daily], at_s=t0)
    await reserve(counter_store, "m2", [daily], at_s=t0 + 60)

    first = await reserve(counter_store, "m3", [daily], at_s=t0 + 120, defer=True)

    assert (first.chosen, first.deferred, first.duplicate, first.reserved_at_s) == (0, True, False, t0 + DAY)
    # option 0's usages at the deferred instant: m1 has left the window there, m2 and m3 count
    assert first.options == (OptionOutcome(False, (CapUsage(daily, 2, t0 + 60 + DAY),), t0 + DAY),)
    second = await reserve(counter_store, "m4", [daily], at_s=t0 + 180, defer=True)
    assert (second.chosen, second.deferred, second.reserved_at_s) == (0, True, t0 + 60 + DAY)
    refused = await reserve(counter_store, "m5", [daily], at_s=t0 + 240)
    assert refused.chosen is None and refused.options[0].retry_at_s == t0 + 2 * DAY  # m3 + a day


async def test_defer_only_when_no_option_fits(counter_store: CounterStore, t0: float):
    sms = [cap("sms_hour", 1, HOUR, channel="sms")]
    email = [cap("email_hour", 1, HOUR, channel="email")]
    await reserve(counter_store, "m1", sms, email, at_s=t0)

    fell_through = await reserve(counter_store, "m2", sms, email, at_s=t0 + 1, defer=True)
    deferred = await reserve(counter_store, "m3", sms, email, at_s=t0 + 2, defer=True)

    assert (fell_through.chosen, fell_through.deferred, fell_through.reserved_at_s) == (1, False, t0 + 1)
    assert (deferred.chosen, deferred.deferred, deferred.reserved_at_s) == (0, True, t0 + HOUR)
    assert deferred.options == (
        OptionOutcome(False, (CapUsage(sms[0], 1, t0 + 2 * HOUR),), t0 + HOUR),
        OptionOutcome(False, (CapUsage(email[0], 1, t0 + 1 + HOUR),), t0 + 1 + HOUR),
    )


async def test_defer_respects_not_after(counter_store: CounterStore, t0: float):
    hourly = cap("hour", 1, HOUR)
    await reserve(counter_store, "m1", [hourly], at_s=t0)

    late = await reserve(
        counter_store, "m2", [hourly], at_s=t0 + 1, defer=True, not_after_s=t0 + HOUR - 0.001
    )

    assert (late.chosen, late.deferred, late.duplicate, late.reserved_at_s) == (None, False, False, None)
    assert late.options == (OptionOutcome(False, (CapUsage(hourly, 1, t0 + HOUR),), t0 + HOUR),)
    assert await used(counter_store, [hourly], at_s=t0 + HOUR) == [0]  # nothing recorded for m2
    just = await reserve(counter_store, "m2", [hourly], at_s=t0 + 1, defer=True, not_after_s=t0 + HOUR)
    assert (just.chosen, just.deferred, just.reserved_at_s) == (0, True, t0 + HOUR)


async def test_defer_with_dry_run_records_nothing(counter_store: CounterStore, t0: float):
    hourly = cap("hour", 1, HOUR)
    await reserve(counter_store, "m1", [hourly], at_s=t0)

    probe = await reserve(counter_store, "m2", [hourly], at_s=t0 + 1, dry_run=True, defer=True)

    assert (probe.chosen, probe.deferred, probe.reserved_at_s) == (None, False, None)
    assert probe.options[0].retry_at_s == t0 + HOUR
    assert await used(counter_store, [hourly], at_s=t0 + HOUR) == [0]
    assert not (await reserve(counter_store, "m2", [hourly], at_s=t0 + HOUR)).duplicate


async def test_repeat_of_a_deferred_reservation_keeps_its_instant(counter_store: CounterStore, t0: float):
    hourly = cap("hour", 1, HOUR)
    await reserve(counter_store, "m1", [hourly], at_s=t0)
    assert (await reserve(counter_store, "m2", [hourly], at_s=t0 + 1, defer=True)).deferred

    repeat = await reserve(counter_store, "m2", [hourly], at_s=t0 + 2, defer=True)

    assert (repeat.chosen, repeat.duplicate, repeat.deferred, repeat.reserved_at_s) == (
        0,
        True,
        False,
        t0 + HOUR,
    )
    assert repeat.options == (OptionOutcome(True, (CapUsage(hourly, 2, t0 + HOUR),), None),)


async def test_defer_waits_for_the_later_of_user_and_global_caps(counter_store: CounterStore, t0: float):
    """On a Cluster the user and the global caps live in two slot groups (see redis_cluster.py)."""
    per_user, promo = cap("u_hour", 1, HOUR), cap("g_day", 2, DAY, scope="global")
    option = [per_user, promo]
    assert (await reserve(counter_store, "m1", option, user="alice", at_s=t0)).chosen == 0

    # alice's hourly cap is full, the promo has room: the user cap sets the instant
    user_bound = await reserve(counter_store, "m2", option, user="alice", at_s=t0 + 10, defer=True)
    assert (user_bound.chosen, user_bound.deferred, user_bound.reserved_at_s) == (0, True, t0 + HOUR)
    assert user_bound.options[0].usages == (
        CapUsage(per_user, 1, t0 + 2 * HOUR),
        CapUsage(promo, 2, t0 + DAY),
    )

    # the promo is full (m1, m2): bob's first message waits for it
    global_bound = await reserve(counter_store, "m3", option, user="bob", at_s=t0 + 20, defer=True)
    assert (global_bound.chosen, global_bound.deferred, global_bound.reserved_at_s) == (0, True, t0 + DAY)
    assert global_bound.options[0].usages == (
        CapUsage(per_user, 1, t0 + DAY + HOUR),
        CapUsage(promo, 2, t0 + HOUR + DAY),
    )
    # bob's hourly cap holds m3 only at its deferred instant, nothing at the instants tried before
    probe = await reserve(counter_store, "m4", [per_user], user="bob", at_s=t0 + DAY - 600, dry_run=True)
    assert probe.chosen is None and probe.options[0].retry_at_s == t0 + DAY + HOUR
    free = await reserve(counter_store, "m4", [per_user], user="bob", at_s=t0 + HOUR + 30, dry_run=True)
    assert free.chosen == 0

    # both bind, the promo later: user entry moved to the promo's instant
    both = await reserve(counter_store, "m5", option, user="alice", at_s=t0 + 40, defer=True)
    assert (both.chosen, both.deferred, both.reserved_at_s) == (0, True, t0 + HOUR + DAY)
    assert both.options[0].usages == (
        CapUsage(per_user, 1, t0 + 2 * HOUR + DAY),
        CapUsage(promo, 2, t0 + 2 * DAY),
    )

    # the promo pushes carol past not_after: refused, her user cap left as it was
    carol = await reserve(
        counter_store, "m6", option, user="carol", at_s=t0 + 50, defer=True, not_after_s=t0 + DAY
    )
    assert (carol.chosen, carol.deferred, carol.reserved_at_s) == (None, False, None)
    assert carol.options[0].retry_at_s == t0 + 2 * DAY  # after m3 (t0 + DAY) leaves
    assert await used(counter_store, [per_user], user="carol", at_s=t0 + 50) == [0]
    assert not (await reserve(counter_store, "m6", [per_user], user="carol", at_s=t0 + 60)).duplicate


async def test_defer_finds_the_earliest_gap_between_planned_entries(counter_store: CounterStore, t0: float):
    """1 an hour, entries at T0 and T0+2h: a message at T0+10min fits at T0+1h, between them
    (the window ending at T0+2h then holds only the T0+2h entry), not after the last one."""
    hourly = cap("gap_hourly", 1, HOUR)
    assert (await reserve(counter_store, "g0", [hourly], at_s=t0)).chosen == 0
    assert (await reserve(counter_store, "g2", [hourly], at_s=t0 + 2 * HOUR)).chosen == 0

    deferred = await reserve(counter_store, "g1", [hourly], at_s=t0 + 600, defer=True)
    assert (deferred.chosen, deferred.deferred, deferred.reserved_at_s) == (0, True, t0 + HOUR)
    # the gap is now taken: the next one goes after the last entry
    after = await reserve(counter_store, "g3", [hourly], at_s=t0 + 700, defer=True)
    assert after.reserved_at_s == t0 + 3 * HOUR

    # 2 a day with entries at T0+1h and T0+30h: T0+2h fits (no day holds three)
    daily = cap("gap_daily", 2, DAY)
    assert (await reserve(counter_store, "d1", [daily], user="dan", at_s=t0 + HOUR)).chosen == 0
    assert (await reserve(counter_store, "d2", [daily], user="dan", at_s=t0 + 30 * HOUR)).chosen == 0
    probe = await reserve(counter_store, "d3", [daily], user="dan", at_s=t0 + 2 * HOUR, dry_run=True)
    assert probe.chosen == 0
    # 1 a day with the same entries: no gap is a day wide, so it waits until T0+30h leaves
    tight = cap("gap_tight", 1, DAY)
    assert (await reserve(counter_store, "e1", [tight], user="eve", at_s=t0 + HOUR)).chosen == 0
    assert (await reserve(counter_store, "e2", [tight], user="eve", at_s=t0 + 30 * HOUR)).chosen == 0
    squeezed = await reserve(counter_store, "e3", [tight], user="eve", at_s=t0 + 2 * HOUR, dry_run=True)
    assert squeezed.chosen is None and squeezed.options[0].retry_at_s == t0 + 54 * HOUR


async def test_concurrent_deferrals_take_distinct_slots(counter_store: CounterStore, t0: float):
    """50 decisions at once against 3 per hour: 3 go now, 47 are deferred one after the other,
    and no window ever holds more than 3 (the deferred instants are found and taken atomically)."""
    three = cap("three", 3, HOUR)
    outcomes = await asyncio.gather(
        *(reserve(counter_store, f"m{i}", [three], at_s=t0 + i / 1000, defer=True) for i in range(50))
    )

    assert all(o.chosen == 0 and not o.duplicate for o in outcomes)
    immediate = [o.reserved_at_s for o in outcomes if not o.deferred]
    deferred = sorted(o.reserved_at_s for o in outcomes if o.deferred and o.reserved_at_s is not None)
    assert len(immediate) == 3 and len(deferred) == 47
    assert all(a < b for a, b in itertools.pairwise(deferred))  # distinct, increasing
    assert deferred[0] >= t0 + HOUR
    assert crowded_windows([*immediate, *deferred], 3, HOUR) == []
    # the store holds every message at the instant its outcome named
    for i, outcome in enumerate(outcomes):
        repeat = await reserve(counter_store, f"m{i}", [three], at_s=t0 + 1)
        assert repeat.duplicate and repeat.reserved_at_s == outcome.reserved_at_s


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
async def test_matches_the_memory_reference_step_by_step(counter_store: CounterStore, t0: float, seed: int):
    """Random decisions, repeats, dry runs, deferrals (some bounded by not_after) and partial
    refunds: every outcome equals the in-process reference's (but `now_s`)."""
    await replay_against_reference(counter_store, t0, seed)


async def test_the_request_clock_is_the_stores_now_months_in_the_past(counter_store: CounterStore, t0: float):
    # Given a request clock 120 days behind the real one (a simulation replaying the spring)
    past = t0 - 120 * DAY
    hourly, daily = cap("sms_hour", 1, HOUR), cap("sms_day", 2, DAY)
    first = await reserve(counter_store, "m1", [hourly, daily], now_s=past)
    assert (first.now_s, first.reserved_at_s) == (past, past)
    # Then windows are measured on that clock, and what was reserved is still there later:
    # its expiry follows the real clock by the same duration (nothing expires "months ago")
    await asyncio.sleep(0.05)
    refused = await reserve(counter_store, "m2", [hourly, daily], now_s=past + 600)
    assert refused.chosen is None
    assert refused.options[0].retry_at_s == past + HOUR
    deferred = await reserve(counter_store, "m2", [hourly, daily], now_s=past + 600, defer=True)
    assert (deferred.deferred, deferred.reserved_at_s) == (True, past + HOUR)
    full = await reserve(counter_store, "m3", [hourly, daily], now_s=past + 3 * HOUR)
    assert full.chosen is None and full.options[0].retry_at_s == past + DAY
    # And a day later on the request clock there is room again
    assert (await reserve(counter_store, "m4", [hourly, daily], now_s=past + DAY + 1)).chosen == 0
