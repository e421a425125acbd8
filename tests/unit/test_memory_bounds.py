"""The memory store's per-person state is bounded and swept (issue 14, "Memory"): what left its
window or TTL goes, sizes come back down, long-lived state stays out of the cyclic GC, and the
caches have a hard bound. Clocks are injected or carried by the requests: nothing waits."""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta

import pytest
from smart_dispatch.behaviour.base import MESSAGE_TTL_S, EngagementEvent, Recorded, SentMessage
from smart_dispatch.behaviour.memory import PERSON_TTL_S, PREFIX_EVERY, MemoryBehaviourStore
from smart_dispatch.counters.base import CapSpec, ReserveRequest
from smart_dispatch.counters.memory import MemoryCounterStore
from smart_dispatch.decisionlog.base import COUNT_RETENTION_DAYS, LogBatch
from smart_dispatch.decisionlog.memory import MemoryDecisionLog

REAL = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()  # the store's real clock: fixed
DAY = 86400.0
HL = 30 * DAY


class Clock:
    def __init__(self, now: float = REAL) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sent(user: str, message: str, now_s: float, channel: str = "email") -> SentMessage:
    return SentMessage(user, message, channel, "wd12", "marketing", now_s, now_s)


def opened(user: str, message: str, at_s: float, channel: str = "email") -> EngagementEvent:
    return EngagementEvent(user, "opened", channel, at_s, message)


# -- behaviour: message records ------------------------------------------------------------------


async def test_message_records_are_swept_once_their_ttl_passed_on_the_request_clock():
    # Given 1,000 messages decided on day 0 of a simulation (the real clock does not move)
    store = MemoryBehaviourStore(Clock())
    for i in range(1000):
        await store.decided(sent(f"u{i}", f"m{i}", REAL), HL)
    assert store.sizes()["messages"] == 1000

    # When the simulation decides one more message 7 days and a second later, and a sweep runs
    await store.decided(sent("late", "m-late", REAL + MESSAGE_TTL_S + 1), HL)
    swept = store.sweep()

    # Then the old records are gone, the new one is kept, and the people's counts stay
    assert swept == 1000
    assert store.sizes()["messages"] == 1
    assert store.sizes()["people"] == 1001


async def test_the_sweeps_run_by_themselves_and_keep_the_records_to_their_window():
    # Given a store whose full sweep runs after as many writes as the last one left (at least 100)
    store = MemoryBehaviourStore(Clock(), sweep_min=100)
    sizes = []
    # When 200 messages a simulated day are decided for 60 days, to 50 people
    for i in range(60 * 200):
        now = REAL + i * DAY / 200
        await store.decided(sent(f"u{i % 50}", f"m{i}", now), HL)
        sizes.append(store.sizes()["messages"])

    # Then the records never exceed the 7 days a record lives (1,400) by more than the writes
    # between two sweeps of the oldest, and stay near it
    assert max(sizes) <= 7 * 200 + PREFIX_EVERY + 1
    assert sizes[-1] >= 7 * 200
    assert store.sizes()["people"] == 50


async def test_an_expired_record_reads_as_unknown_as_on_redis():
    store = MemoryBehaviourStore(Clock())
    await store.decided(sent("ada", "m1", REAL, channel="sms"), HL)
    # A repeat within the TTL is one send; an event a day later is attributed to the SMS
    assert not await store.decided(sent("ada", "m1", REAL + DAY), HL)
    assert await store.record(opened("ada", "m1", REAL + DAY, "sms"), HL) == Recorded(
        True, "sms", "wd12", "marketing", False
    )
    # Past the TTL (the clock moved on with another decision) the message is not known any more
    await store.decided(sent("bob", "other", REAL + MESSAGE_TTL_S + DAY), HL)
    late = await store.record(opened("ada", "m1", REAL + MESSAGE_TTL_S + DAY, "push"), HL)
    assert late == Recorded(True, "push", "", "", True)


async def test_a_simulation_in_the_past_keeps_its_records_for_its_own_seven_days():
    # Given a sidecar whose real clock is REAL, deciding on a request clock 200 days earlier
    store = MemoryBehaviourStore(Clock())
    past = REAL - 200 * DAY
    await store.decided(sent("ada", "m1", past, channel="in_app"), HL)
    # When a sweep runs an (simulated) hour later, and the message is opened then
    await store.decided(sent("bob", "m2", past + 3600), HL)
    store.sweep()
    recorded = await store.record(opened("ada", "m1", past + 3600, "in_app"), HL)
    # Then the record was kept: the open is attributed to its decision
    assert recorded == Recorded(True, "in_app", "wd12", "marketing", False)


# -- behaviour: people ---------------------------------------------------------------------------


async def test_people_idle_past_their_ttl_read_as_new_and_are_swept():
    clock = Clock()
    store = MemoryBehaviourStore(clock)
    for i in range(100):
        await store.record(EngagementEvent(f"u{i}", "active", None, REAL), HL)
    await store.decided(sent("u0", "m0", REAL), HL)
    assert (await store.get("u0")).counts

    # 180 days later (real time here: no decision moved the request clock on) one person is back
    clock.now = REAL + PERSON_TTL_S + 1
    await store.record(EngagementEvent("u1", "active", None, clock.now), HL)
    assert (await store.get("u0")).counts == {}  # expired: as a Redis key past its TTL
    store.sweep()
    assert store.sizes()["people"] == 1
    assert set((await store.get("u1")).counts) == {f"active:u{datetime.fromtimestamp(REAL, UTC).hour:02d}"}


async def test_counts_read_back_exactly_as_they_were_added():
    store = MemoryBehaviourStore(Clock())
    for i in range(30):
        await store.decided(SentMessage("ada", f"m{i}", "email", f"wd{i % 24:02d}", "m", REAL + i * 3600), HL)
        await store.record(opened("ada", f"m{i}", REAL + i * 3600 + 60), HL)
    counts = (await store.get("ada")).counts
    assert counts["email:sent"].at(REAL + 30 * 3600, HL) == pytest.approx(
        sum(2 ** (-(30 - i) * 3600 / HL) for i in range(30))
    )
    assert counts["slot:wd05:sent"].value == pytest.approx(1 + 2 ** (-24 * 3600 / HL))
    assert len(counts) == 2 + 24 + 24  # email:sent, email:opened, 24 slots x (sent, opened)
    # and the table of names grows with the vocabulary (channels, kinds, slots), not with people
    names = store.sizes()["names"]
    for i in range(1000):
        await store.decided(SentMessage(f"p{i}", f"n{i}", "email", f"wd{i % 24:02d}", "m", REAL + i), HL)
        await store.record(opened(f"p{i}", f"n{i}", REAL + i + 60), HL)
    assert store.sizes()["names"] == names


async def test_long_lived_behaviour_state_is_not_tracked_by_the_cyclic_gc():
    # Given a store holding 2,000 people, each with a few counts, and 2,000 message records
    store = MemoryBehaviourStore(Clock())
    await store.decided(sent("warm", "warm", REAL), HL)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(2000):
        await store.decided(sent(f"p{i}", f"m{i}", REAL + i), HL)
        await store.record(opened(f"p{i}", f"m{i}", REAL + i + 60), HL)
    # When the collector has run once
    gc.collect()
    # Then it tracks (almost) no more objects than before: people and records are bytes
    assert len(gc.get_objects()) - before < 100


# -- counters --------------------------------------------------------------------------------------


async def test_cap_keys_go_when_their_window_passed_and_the_sweep_keeps_them_to_the_window():
    # Given a store sweeping once a quarter as many keys were made as the last sweep left (at
    # least 50)
    hourly, daily = CapSpec("hourly", 1, 3600.0), CapSpec("daily", 3, 86400.0)
    store = MemoryCounterStore(Clock(), sweep_every=50)
    keys = []
    # When 10,000 people get one message each, 100 a simulated hour, over 100 hours
    for i in range(10_000):
        now = REAL + i * 36.0
        await store.reserve(ReserveRequest(f"u{i}", f"m{i}", ((hourly, daily),), now_s=now))
        keys.append(store.sizes()["keys"])
    # Then the daily cap's keys (24 h: 2,400 people) and the hourly's (100) are all that stay,
    # with at most one sweep interval's worth (a quarter) more
    assert max(keys) <= (2400 + 100) * 5 // 4 + 2
    last = REAL + 9_999 * 36.0
    store.sweep(last)
    assert store.sizes() == {"keys": 2400 + 100, "entries": 2400 + 100}
    # And a day after the last message, nothing is left
    assert store.sweep(last + DAY) == 2500
    assert store.sizes() == {"keys": 0, "entries": 0}


async def test_a_deferred_reservation_is_kept_until_its_own_window_passed():
    hourly = CapSpec("hourly", 1, 3600.0)
    store = MemoryCounterStore(Clock())
    await store.reserve(ReserveRequest("ada", "m1", ((hourly,),), at_s=REAL + 5 * 3600, now_s=REAL))
    store.sweep(REAL + 5 * 3600)  # the slot is still ahead: kept
    assert store.sizes()["entries"] == 1
    store.sweep(REAL + 6 * 3600)
    assert store.sizes()["entries"] == 0


# -- decision log and caches -------------------------------------------------------------------------


async def test_day_counts_older_than_their_retention_before_the_latest_day_are_dropped():
    log = MemoryDecisionLog(clock=Clock())
    for offset in range(0, COUNT_RETENTION_DAYS + 30, 10):
        day = datetime.fromtimestamp(REAL + offset * DAY, UTC).date().isoformat()
        await log.write(LogBatch(counts={(day, "decided"): 1.0}))
    latest = datetime.fromtimestamp(REAL + (COUNT_RETENTION_DAYS + 20) * DAY, UTC).date()
    kept = await log.counts(
        [datetime.fromtimestamp(REAL + o * DAY, UTC).date().isoformat() for o in range(0, 430, 10)]
    )
    assert min(kept) >= (latest - timedelta(days=COUNT_RETENTION_DAYS)).isoformat()
    assert max(kept) == latest.isoformat()
    assert len(kept) == COUNT_RETENTION_DAYS // 10 + 1


def test_the_rules_engines_memo_of_fact_documents_has_a_hard_bound():
    from smart_dispatch.rules.engine import MEMO_SIZE, CompiledRules
    from smart_dispatch.rules.loader import parse_ruleset

    rules = """\
rules:
  - {name: low, when: {$lt: {user.score: 3}}, then: {}}
  - {name: always, priority: 65535, when: {}, then: {}}
"""
    compiled = CompiledRules(parse_ruleset({"rules.yaml": rules}))
    try:
        # Every person's facts differ: as many distinct documents as the memo holds, and more
        for score in range(MEMO_SIZE + 500):
            assert compiled.matches({"user": {"score": score}}) == (
                ["low", "always"] if score < 3 else ["always"]
            )
            assert len(compiled._memo) <= MEMO_SIZE
        assert len(compiled._memo) == MEMO_SIZE
        assert '{"user":{"score":0}}' not in compiled._memo  # the oldest went first
    finally:
        compiled.close()
