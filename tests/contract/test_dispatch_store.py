"""The DispatchStore contract (dispatch/store.py), one suite on memory, one Redis and a Cluster.

What the sender pool relies on: accepted = persisted and queued; claims carry their record; an
unacked claim is handed out again after the claim timeout, with the record as stored by then;
the update that finishes a claim acks it in the same step; updates are optimistic; scheduled
work comes out when due, not before; a cancelled dispatch is never handed out as sendable; the
dead-letter index changes with the record, in the same update, and only when the record does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from smart_dispatch.dispatch.memory_store import MemoryDispatchStore
from smart_dispatch.dispatch.model import DispatchRecord, DispatchState
from smart_dispatch.dispatch.redis_store import RedisDispatchStore
from smart_dispatch.dispatch.store import Claim, DispatchStore
from smart_dispatch.domain import Message, PlanStep, Recipient
from smart_dispatch.stores import StoreOptions, stores_from_url

from tests.contract.helpers import Backend
from tests.support.redis_servers import RedisServer

TIMEOUT_S = 2.0
CLAIM_TIMEOUT_S = 0.5
PREFIX = "t"


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[DispatchStore]:
    options = StoreOptions(timeout_s=TIMEOUT_S, prefix=PREFIX, claim_timeout_s=CLAIM_TIMEOUT_S)
    stores = stores_from_url(backend.url, options)
    try:
        yield stores.dispatches
    finally:
        await stores.close()


def record(n: int, *, send_at: datetime | None = None, lane: str = "normal") -> DispatchRecord:
    now = datetime.now(UTC)
    state = DispatchState.QUEUED if send_at is None else DispatchState.SCHEDULED
    return DispatchRecord(
        lane=lane,
        dispatch_id=f"d{n}",
        message=Message(f"m{n}", "event", data={"n": n}),
        recipient=Recipient(f"u{n}", addresses={"webhook": "http://127.0.0.1:9/hook"}),
        state=state,
        steps=(PlanStep("webhook", "http://127.0.0.1:9/hook", send_at or now),),
        created_at=now,
        send_at=send_at,
    ).moved(state, now, "accepted")


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def claim_one(store: DispatchStore, consumer: str = "c1", wait_s: float = 2.0) -> Claim:
    claims = await store.claim(consumer, 1, wait_s)
    assert len(claims) == 1, claims
    return claims[0]


async def nothing_to_send(store: DispatchStore, wait_s: float) -> bool:
    """True when, for `wait_s`, every claim handed out is stale (nothing a worker would send)."""
    deadline = time.monotonic() + wait_s
    while (remaining := deadline - time.monotonic()) > 0:
        for claim in await store.claim("probe", 10, remaining):
            if claim.record is not None and claim.record.version == claim.token:
                return False
            await store.ack(claim)
    return True


async def test_created_is_persisted_and_claimed_with_its_record(store: DispatchStore):
    stored, created = await store.create(record(1))

    assert created and stored.version == 1
    assert await store.get("d1") == stored
    assert await store.get_by_message("m1") == stored
    claim = await claim_one(store)
    assert (claim.dispatch_id, claim.token) == ("d1", 1)
    assert claim.record == stored


async def test_a_message_id_dispatched_before_returns_the_first_dispatch(store: DispatchStore):
    first, _ = await store.create(record(1))
    again = record(2)
    again = DispatchRecord(**{**{f: getattr(again, f) for f in again.__slots__}, "message": first.message})

    existing, created = await store.create(again)

    assert (existing, created) == (first, False)
    assert await store.get("d2") is None
    await claim_one(store)
    assert await store.claim("c1", 10, 0.3) == []  # queued once


async def test_updates_are_optimistic(store: DispatchStore):
    stored, _ = await store.create(record(1))
    sending = stored.moved(DispatchState.SENDING, datetime.now(UTC))

    first = await store.update(sending, 1)
    stale = await store.update(sending, 1)

    assert first is not None and first.version == 2
    assert stale is None
    assert await store.get("d1") == first


async def test_an_update_that_finishes_a_claim_acks_it(store: DispatchStore):
    await store.create(record(1))
    claim = await claim_one(store)
    assert claim.record is not None
    delivered = claim.record.moved(DispatchState.DELIVERED, datetime.now(UTC))

    assert await store.update(delivered, claim.token, ack=claim) is not None

    # not handed out again, not even after the claim timeout
    assert await store.claim("c2", 10, CLAIM_TIMEOUT_S * 3) == []


async def test_a_stale_update_acks_its_claim_too(store: DispatchStore):
    stored, _ = await store.create(record(1))
    claim = await claim_one(store)
    await store.update(stored.moved(DispatchState.CANCELLED, datetime.now(UTC)), 1)

    late = await store.update(stored.moved(DispatchState.DELIVERED, datetime.now(UTC)), 1, ack=claim)

    assert late is None
    assert await store.claim("c2", 10, CLAIM_TIMEOUT_S * 3) == []


async def test_a_claim_not_acked_in_time_is_handed_out_again_with_the_record_as_stored_now(
    store: DispatchStore,
):
    # Given a worker that marked its claim SENDING and died
    stored, _ = await store.create(record(1))
    claim = await claim_one(store, "crashed")
    sending = await store.update(stored.moved(DispatchState.SENDING, datetime.now(UTC)), claim.token)
    assert sending is not None

    # When another worker claims after the claim timeout
    started = time.monotonic()
    again = await claim_one(store, "survivor", wait_s=CLAIM_TIMEOUT_S * 6)

    # Then it gets the same work, and the record as it is now: it resumes the send
    assert time.monotonic() - started >= CLAIM_TIMEOUT_S * 0.5
    assert (again.dispatch_id, again.token) == ("d1", 1)
    assert again.record == sending
    await store.ack(again)
    assert await store.claim("c3", 10, CLAIM_TIMEOUT_S * 3) == []


async def test_a_rescheduling_update_queues_the_next_version_and_acks_the_claim(store: DispatchStore):
    await store.create(record(1))
    claim = await claim_one(store)
    assert claim.record is not None
    retry = claim.record.moved(DispatchState.SCHEDULED, datetime.now(UTC), "retry")

    stored = await store.update(retry, claim.token, run_at=later(0.6), ack=claim)

    assert stored is not None
    assert await store.claim("c1", 10, 0.2) == []  # not due yet
    again = await claim_one(store, wait_s=3.0)
    assert (again.token, again.record) == (2, stored)
    await store.ack(again)
    assert await store.claim("c1", 10, CLAIM_TIMEOUT_S * 3) == []  # the first entry is gone


async def test_an_update_queued_for_now_is_ready_at_once(store: DispatchStore):
    await store.create(record(1))
    claim = await claim_one(store)
    assert claim.record is not None
    fallback = claim.record.moved(DispatchState.QUEUED, datetime.now(UTC), "fallback", step_index=0)

    stored = await store.update(fallback, claim.token, run_at=datetime.now(UTC), ack=claim)

    again = await claim_one(store, wait_s=1.0)
    assert (again.token, again.record) == (2, stored)


async def test_scheduled_work_is_handed_out_when_due_and_not_before(store: DispatchStore):
    # Given one dispatch due late and one, created after it, due soon
    await store.create(record(1, send_at=later(30)))
    await store.create(record(2, send_at=later(0.6)))

    # Then nothing is handed out before the earlier one is due, and it is handed out then
    assert await store.claim("c1", 10, 0.2) == []
    started = time.monotonic()
    claim = await claim_one(store, wait_s=3.0)
    assert (claim.dispatch_id, claim.token) == ("d2", 1)
    assert time.monotonic() - started < 2.0
    assert await store.claim("c1", 10, 0.3) == []


async def test_a_cancelled_scheduled_dispatch_is_never_handed_out_to_be_sent(store: DispatchStore):
    stored, _ = await store.create(record(1, send_at=later(0.3)))

    cancelled = await store.update(
        stored.moved(DispatchState.CANCELLED, datetime.now(UTC)), 1, unschedule=True
    )

    assert cancelled is not None
    assert await nothing_to_send(store, 1.2)


async def test_a_dispatch_cancelled_while_queued_is_handed_out_only_as_stale(store: DispatchStore):
    stored, _ = await store.create(record(1))
    await store.update(stored.moved(DispatchState.CANCELLED, datetime.now(UTC)), 1, unschedule=True)

    claim = await claim_one(store)

    # The claim's record may be the one queued, but its version check fails: nothing is sent
    assert claim.token == 1
    sending = await store.update(stored.moved(DispatchState.SENDING, datetime.now(UTC)), claim.token)
    assert sending is None
    current = await store.get("d1")
    assert current is not None and current.state is DispatchState.CANCELLED


async def test_claim_without_waiting_returns_at_once(store: DispatchStore):
    await store.create(record(1))

    started = time.monotonic()
    first = await store.claim("c1", 10, 0)
    second = await store.claim("c1", 10, 0)

    assert [c.dispatch_id for c in first] == ["d1"]
    assert second == []
    assert time.monotonic() - started < 1.0


async def test_claims_share_out_the_work_once(store: DispatchStore):
    for n in range(20):
        await store.create(record(n))

    async def worker(name: str) -> list[str]:
        taken = []
        while claims := await store.claim(name, 1, 0.3):
            for claim in claims:
                taken.append(claim.dispatch_id)
                assert claim.record is not None
                done = claim.record.moved(DispatchState.DELIVERED, datetime.now(UTC))
                await store.update(done, claim.token, ack=claim)
        return taken

    taken = await asyncio.gather(*(worker(f"w{i}") for i in range(4)))

    assert sorted(d for ids in taken for d in ids) == sorted(f"d{n}" for n in range(20))


async def test_a_critical_dispatch_queued_behind_many_normal_ones_is_claimed_next(store: DispatchStore):
    # Given 200 marketing dispatches waiting, then a login code
    for n in range(200):
        await store.create(record(n))
    await store.create(record(1000, lane="critical"))

    # Then the login code is among the next claims (lanes take turns 8 : 2 with normal)
    first = [(await claim_one(store, wait_s=1.0)) for _ in range(2)]
    assert "d1000" in [c.dispatch_id for c in first]
    assert all(c.lane == ("critical" if c.dispatch_id == "d1000" else "normal") for c in first)


async def test_busy_lanes_share_the_claims_by_weight_and_none_starves(store: DispatchStore):
    # Given 40 dispatches waiting in each lane
    for lane_index, lane in enumerate(("critical", "high", "normal", "bulk")):
        for n in range(40):
            await store.create(record(lane_index * 100 + n, lane=lane))

    # When 30 are claimed (and acked)
    taken: list[str] = []
    for _ in range(30):
        claim = await claim_one(store, wait_s=1.0)
        taken.append(claim.lane)
        await store.ack(claim)

    # Then each lane got about its share: 8 : 4 : 2 : 1 of every 15
    assert (taken.count("critical"), taken.count("high"), taken.count("normal"), taken.count("bulk")) == (
        16,
        8,
        4,
        2,
    )


async def test_a_rescheduled_dispatch_keeps_its_lane(store: DispatchStore):
    await store.create(record(1, lane="critical"))
    claim = await claim_one(store)
    assert claim.record is not None and claim.lane == "critical"
    retry = claim.record.moved(DispatchState.SCHEDULED, datetime.now(UTC), "retry")
    await store.update(retry, claim.token, run_at=later(0.3), ack=claim)
    for n in range(20):
        await store.create(record(10 + n))

    await asyncio.sleep(0.5)  # due now, behind 20 normal ones
    again = [await claim_one(store, wait_s=2.0) for _ in range(2)]
    assert ("d1", "critical") in [(c.dispatch_id, c.lane) for c in again]


async def test_a_watch_sees_every_change_however_quick(store: DispatchStore):
    stored, _ = await store.create(record(1))
    before = await store.update(stored.moved(DispatchState.SCHEDULED, datetime.now(UTC)), 1)
    assert before is not None

    async with store.watch("d1") as changes:
        # three versions in a row, faster than anyone could poll
        sending = await store.update(before.moved(DispatchState.SENDING, datetime.now(UTC)), 2)
        assert sending is not None
        retry = await store.update(sending.moved(DispatchState.SCHEDULED, datetime.now(UTC)), 3)
        assert retry is not None
        done = await store.update(retry.moved(DispatchState.DELIVERED, datetime.now(UTC)), 4)
        seen = [await asyncio.wait_for(anext(changes), 5) for _ in range(3)]

    assert seen == [sending, retry, done]


async def test_watchers_of_one_record_each_see_every_change(store: DispatchStore):
    stored, _ = await store.create(record(1))

    async with store.watch("d1") as first, store.watch("d1") as second:
        sending = await store.update(stored.moved(DispatchState.SENDING, datetime.now(UTC)), 1)
        assert sending is not None
        done = await store.update(sending.moved(DispatchState.DELIVERED, datetime.now(UTC)), 2)
        seen_first = [await asyncio.wait_for(anext(first), 5) for _ in range(2)]
        seen_second = [await asyncio.wait_for(anext(second), 5) for _ in range(2)]

    assert seen_first == seen_second == [sending, done]


def dead(stored: DispatchRecord) -> DispatchRecord:
    """`stored` as the sender pool finishes it when every channel failed."""
    return stored.moved(DispatchState.FAILED, datetime.now(UTC), "every channel failed", dead_lettered=True)


def redriven(stored: DispatchRecord) -> DispatchRecord:
    """`stored` (a dead letter) as `RedriveDeadLetters` queues it again."""
    return stored.moved(
        DispatchState.QUEUED, datetime.now(UTC), "re-driven", step_index=0, dead_lettered=False
    )


async def test_the_update_that_dead_letters_a_record_indexes_it(store: DispatchStore):
    # Given a claimed dispatch whose every channel failed
    await store.create(record(1))
    claim = await claim_one(store)
    assert claim.record is not None and await store.dead_letters(10) == []

    # When one update stores it as a dead letter, finishing the claim
    stored = await store.update(dead(claim.record), claim.token, unschedule=True, ack=claim)

    # Then that one call indexed it (there is no second step a crash could skip) and acked the claim
    assert stored is not None and stored.dead_lettered
    assert await store.get("d1") == stored
    assert await store.dead_letters(10) == ["d1"]
    assert await store.claim("c2", 10, CLAIM_TIMEOUT_S * 3) == []


async def test_a_stale_update_changes_neither_the_record_nor_the_dead_letter_index(store: DispatchStore):
    # Given d1, dead-lettered at version 2, and d2, cancelled at version 2
    first, _ = await store.create(record(1))
    dead_letter = await store.update(dead(first), 1)
    second, _ = await store.create(record(2))
    cancelled = await store.update(second.moved(DispatchState.CANCELLED, datetime.now(UTC)), 1)
    assert dead_letter is not None and cancelled is not None

    # When updates based on version 1 try to re-drive d1 and to dead-letter d2
    assert await store.update(redriven(first), 1, run_at=datetime.now(UTC)) is None
    assert await store.update(dead(second), 1, unschedule=True) is None

    # Then both records and the index are as they were: d1 still indexed, d2 never
    assert await store.get("d1") == dead_letter
    assert await store.get("d2") == cancelled
    assert await store.dead_letters(10) == ["d1"]


async def test_the_update_that_redrives_a_dead_letter_takes_it_out_of_the_index(store: DispatchStore):
    stored, _ = await store.create(record(1))
    dead_letter = await store.update(dead(stored), 1)
    assert dead_letter is not None
    await store.ack(await claim_one(store))

    again = await store.update(redriven(dead_letter), dead_letter.version, run_at=datetime.now(UTC))

    assert again is not None and not again.dead_lettered
    assert await store.dead_letters(10) == []
    claim = await claim_one(store)
    assert (claim.dispatch_id, claim.token, claim.record) == ("d1", again.version, again)


async def test_dead_letters_come_oldest_first_and_keep_their_place(store: DispatchStore):
    # Given d1 dead-lettered before d2
    for n in (1, 2):
        stored, _ = await store.create(record(n))
        assert await store.update(dead(stored), 1) is not None
        await asyncio.sleep(0.01)
    dead_first = await store.get("d1")
    assert dead_first is not None

    # When d1 is stored again, still a dead letter
    assert await store.update(dead_first.moved(DispatchState.FAILED, datetime.now(UTC)), 2) is not None

    # Then it is still the oldest; the limit takes the oldest
    assert await store.dead_letters(10) == ["d1", "d2"]
    assert await store.dead_letters(1) == ["d1"]


async def test_depth_counts_ready_work_per_lane_scheduled_work_and_dead_letters(store: DispatchStore):
    # Given an empty store
    empty = {"critical": 0, "high": 0, "normal": 0, "bulk": 0, "scheduled": 0, "dead_letters": 0}
    assert await store.depth() == empty

    # When work is queued in two lanes, one item is scheduled for later and one dead-lettered
    await store.create(record(1, lane="critical"))
    for n in (2, 3, 4):
        await store.create(record(n, lane="bulk"))
    await store.create(record(5, send_at=later(60)))
    stored, _ = await store.create(record(6, lane="high"))
    claim = await claim_one(store)  # the critical item goes to a worker first
    assert claim.dispatch_id == "d1"

    # Then a claimed item is no longer waiting; everything else is where it waits
    assert await store.depth() == {**empty, "bulk": 3, "high": 1, "scheduled": 1}
    assert await store.update(dead(stored), 1) is not None
    depth = await store.depth()
    assert depth["dead_letters"] == 1 and depth["critical"] == 0


# --- Redis only: the layout of the keys of one server ---------------------------------------------


@pytest.fixture
async def redis_store(single_redis: RedisServer) -> AsyncIterator[RedisDispatchStore]:
    single_redis.flushall()
    options = StoreOptions(timeout_s=TIMEOUT_S, prefix=PREFIX, claim_timeout_s=CLAIM_TIMEOUT_S)
    stores = stores_from_url(single_redis.url, options)
    assert isinstance(stores.dispatches, RedisDispatchStore)
    try:
        yield stores.dispatches
    finally:
        await stores.close()


@pytest.mark.redis
async def test_an_entry_queued_without_its_record_is_claimed_with_it(
    single_redis: RedisServer, redis_store: RedisDispatchStore
):
    # Given a stream entry as an older version queued it: id and token, no record
    stored, _ = await redis_store.create(record(1))
    claim = await claim_one(redis_store)
    await redis_store.update(stored.moved(DispatchState.CANCELLED, datetime.now(UTC)), 1, ack=claim)
    queued, _ = await redis_store.create(record(2))
    await redis_store.ack(await claim_one(redis_store))
    with single_redis.client() as client:
        client.xadd(f"{PREFIX}:{{d}}:ready", {"id": "d2", "token": 1})

    # Then it is handed out with the record as stored
    again = await claim_one(redis_store)
    assert (again.dispatch_id, again.token, again.record) == ("d2", 1, queued)


@pytest.mark.redis
async def test_the_queue_is_set_up_again_when_its_keys_are_gone(
    single_redis: RedisServer, redis_store: RedisDispatchStore
):
    await redis_store.create(record(1))
    await claim_one(redis_store)
    single_redis.flushall()

    await redis_store.create(record(2))
    claim = await claim_one(redis_store)

    assert claim.dispatch_id == "d2"


@pytest.mark.redis
async def test_a_dead_letter_never_expires_while_other_final_records_do(
    single_redis: RedisServer, redis_store: RedisDispatchStore
):
    # Given one dispatch delivered and one dead-lettered (both final)
    delivered, _ = await redis_store.create(record(1))
    failed, _ = await redis_store.create(record(2))
    assert await redis_store.update(delivered.moved(DispatchState.DELIVERED, datetime.now(UTC)), 1)
    assert await redis_store.update(dead(failed), 1)

    # Then the delivered record is kept for the retention time, the dead letter until re-driven
    # (an index entry whose record had expired would stop RedriveDeadLetters)
    with single_redis.client() as client:
        assert 0 < client.ttl(f"{PREFIX}:{{d}}:rec:d1") <= 7 * 86400
        assert 0 < client.ttl(f"{PREFIX}:{{d}}:msg:m1") <= 7 * 86400
        assert client.ttl(f"{PREFIX}:{{d}}:rec:d2") == -1
        assert client.ttl(f"{PREFIX}:{{d}}:msg:m2") == -1

    # And once re-driven and delivered, it expires like any other
    dead_letter = await redis_store.get("d2")
    assert dead_letter is not None
    again = await redis_store.update(redriven(dead_letter), dead_letter.version)
    assert again is not None
    assert await redis_store.update(again.moved(DispatchState.DELIVERED, datetime.now(UTC)), again.version)
    with single_redis.client() as client:
        assert 0 < client.ttl(f"{PREFIX}:{{d}}:rec:d2") <= 7 * 86400


async def test_the_memory_store_forgets_final_records_after_their_retention_but_not_dead_letters():
    store = MemoryDispatchStore(claim_timeout_s=CLAIM_TIMEOUT_S, retention_s=0.05)
    delivered, _ = await store.create(record(1))
    failed, _ = await store.create(record(2))
    queued, _ = await store.create(record(3))
    done = await store.update(delivered.moved(DispatchState.DELIVERED, datetime.now(UTC)), 1)
    assert done is not None and await store.update(dead(failed), 1) is not None

    await asyncio.sleep(0.1)
    await store.create(record(4))  # a create sweeps

    # the delivered record is gone, and its message id may be dispatched anew
    assert await store.get("d1") is None and await store.get_by_message("m1") is None
    again, created = await store.create(record(1))
    assert created and again.version == 1
    # the dead letter and the unfinished dispatch stay
    assert (await store.get("d2")) is not None and await store.dead_letters(10) == ["d2"]
    assert await store.get("d3") == queued


@pytest.mark.redis
async def test_index_entries_whose_record_expired_are_dropped_not_redriven(
    single_redis: RedisServer, redis_store: RedisDispatchStore
):
    # Given two dead letters, the older one stored before dead letters were kept for good: its
    # record has expired, its index entry has not
    for n in (1, 2):
        stored, _ = await redis_store.create(record(n))
        assert await redis_store.update(dead(stored), 1) is not None
        await asyncio.sleep(0.01)
    with single_redis.client() as client:
        client.delete(f"{PREFIX}:{{d}}:rec:d1")

    # Then the index offers only the dead letter that can be re-driven, and forgets the other
    assert await redis_store.dead_letters(10) == ["d2"]
    with single_redis.client() as client:
        assert client.zrange(f"{PREFIX}:{{d}}:dead", 0, -1) == [b"d2"]
