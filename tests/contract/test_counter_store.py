"""The CounterStore contract (counters/base.py), one suite on memory, one Redis and a Cluster.

Planned instants (`at_s`) are offsets from `t0`, a round instant near the real clock: stores drop
entries older than their own now minus the window, so instants far from now would expire at once.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from smart_dispatch.counters.base import CapUsage, CounterStore, OptionOutcome
from smart_dispatch.counters.memory import MemoryCounterStore

from tests.contract.helpers import DAY, HOUR, cap, reserve, used


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


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_matches_the_memory_reference_step_by_step(counter_store: CounterStore, t0: float, seed: int):
    """Random decisions, repeats, dry runs and partial refunds: every outcome equals the
    in-process reference's (but `now_s`)."""
    rng = random.Random(seed)
    pool = [
        cap("u_hour", 2, HOUR),
        cap("u_day", 3, DAY),
        cap("u_sms", 1, HOUR, channel="sms"),
        cap("g_hour", 3, HOUR, scope="global"),
        cap("g_day", 5, DAY, scope="global"),
    ]
    reference = MemoryCounterStore()
    for _ in range(120):
        user, member = rng.choice(["alice", "bob"]), rng.choice([f"m{i}" for i in range(8)])
        if rng.random() < 0.15:
            caps = rng.sample(pool, rng.randint(1, len(pool)))
            await reference.refund(user, member, caps)
            await counter_store.refund(user, member, caps)
            continue
        options = [rng.sample(pool, rng.randint(0, 3)) for _ in range(rng.randint(1, 3))]
        at_s = t0 + rng.uniform(-1800, 7200)
        dry_run = rng.random() < 0.2
        expected = await reserve(reference, member, *options, user=user, at_s=at_s, dry_run=dry_run)
        actual = await reserve(counter_store, member, *options, user=user, at_s=at_s, dry_run=dry_run)
        assert (actual.chosen, actual.duplicate, actual.reserved_at_s, actual.options) == (
            expected.chosen,
            expected.duplicate,
            expected.reserved_at_s,
            expected.options,
        ), f"user={user} member={member} at={at_s} dry_run={dry_run} options={options}"
