"""The BehaviourStore contract (behaviour/base.py): the engagement model's counts, decay,
de-duplication and attribution, and the population prior; one suite on memory, one Redis and a
Cluster."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from smart_dispatch.behaviour.base import (
    Behaviour,
    BehaviourStore,
    ChannelStats,
    EngagementEvent,
    EventKind,
    Recorded,
    SentMessage,
)

from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0
HALF_LIFE = 30 * DAY


def event(
    user: str, kind: EventKind, channel: str | None, message: str, at_s: float = T0, value: float = 0.0
):
    return EngagementEvent(user, kind, channel, at_s, message, value)


def sent(
    user: str, message: str, channel: str, slot: str = "wd12", at_s: float = T0, category: str = "promo"
):
    return SentMessage(user, message, channel, slot, category, at_s)


async def test_an_unknown_user_has_no_behaviour(behaviour_store: BehaviourStore):
    assert await behaviour_store.get("nobody") == Behaviour()


async def test_events_are_counted_per_channel_once_per_message(behaviour_store: BehaviourStore):
    # Given two e-mails decided for ada and one SMS
    for message in ("e1", "e2"):
        assert await behaviour_store.decided(sent("ada", message, "email"), HALF_LIFE)
    assert await behaviour_store.decided(sent("ada", "s1", "sms"), HALF_LIFE)
    # When receipts and engagement arrive, some of them twice (a receipt and the pool's delivery)
    for kind, message in [("delivered", "e1"), ("delivered", "e1"), ("delivered", "e2"), ("opened", "e1")]:
        await behaviour_store.record(event("ada", kind, "email", message), HALF_LIFE)
    await behaviour_store.record(event("ada", "opened", "email", "e1"), HALF_LIFE)
    await behaviour_store.record(event("ada", "clicked", "email", "e1"), HALF_LIFE)
    await behaviour_store.record(event("ada", "bounced", "sms", "s1"), HALF_LIFE)
    # Then each (message, kind, channel) counted once
    behaviour = await behaviour_store.get("ada")
    assert behaviour.stats("email", T0, HALF_LIFE) == ChannelStats(sent=2, delivered=2, opened=1, clicked=1)
    assert behaviour.stats("sms", T0, HALF_LIFE) == ChannelStats(sent=1, bounced=1)
    assert behaviour.stats("push", T0, HALF_LIFE) == ChannelStats()
    assert behaviour.stats("email", T0, HALF_LIFE).engagement == (1 + 1) / (2 + 2)


async def test_a_message_decided_twice_is_one_send(behaviour_store: BehaviourStore):
    assert await behaviour_store.decided(sent("ada", "m1", "email"), HALF_LIFE)
    assert not await behaviour_store.decided(sent("ada", "m1", "email"), HALF_LIFE)
    assert (await behaviour_store.get("ada")).stats("email", T0, HALF_LIFE).sent == 1


async def test_events_are_attributed_to_the_decisions_channel_and_slot(behaviour_store: BehaviourStore):
    await behaviour_store.decided(sent("ada", "m1", "email", slot="we09"), HALF_LIFE)
    recorded = await behaviour_store.record(event("ada", "opened", "email", "m1", T0 + 3600), HALF_LIFE)
    assert recorded == Recorded(True, "email", "we09", "promo", False)
    counts = (await behaviour_store.get("ada")).counts
    assert counts["slot:we09:sent"].at(T0, HALF_LIFE) == pytest.approx(1.0)
    assert counts["slot:we09:opened"].at(T0 + 3600, HALF_LIFE) == pytest.approx(1.0)
    # A repeat says it changed nothing
    assert await behaviour_store.record(event("ada", "opened", "email", "m1"), HALF_LIFE) == Recorded(False)


async def test_an_event_for_a_message_not_decided_here_counts_its_send_so_rates_stay_below_one(
    behaviour_store: BehaviourStore,
):
    for kind in ("delivered", "opened", "clicked"):
        await behaviour_store.record(event("cy", kind, "push", "elsewhere-1"), HALF_LIFE)
    stats = (await behaviour_store.get("cy")).stats("push", T0, HALF_LIFE)
    assert stats == ChannelStats(sent=1, delivered=1, opened=1, clicked=1)
    assert stats.engaged <= stats.tried


async def test_counts_decay_with_the_half_life_whatever_order_events_arrive_in(
    behaviour_store: BehaviourStore,
):
    # One open now, one 30 days (a half-life) earlier arriving late
    await behaviour_store.record(event("dee", "opened", "email", "new", T0), HALF_LIFE)
    await behaviour_store.record(event("dee", "opened", "email", "old", T0 - 30 * DAY), HALF_LIFE)
    stats = (await behaviour_store.get("dee")).stats
    assert stats("email", T0, HALF_LIFE).opened == pytest.approx(1.5)
    assert stats("email", T0 + 30 * DAY, HALF_LIFE).opened == pytest.approx(0.75)


async def test_conversions_count_with_their_value(behaviour_store: BehaviourStore):
    await behaviour_store.decided(sent("eve", "m1", "sms"), HALF_LIFE)
    await behaviour_store.record(event("eve", "converted", "sms", "m1", value=42.5), HALF_LIFE)
    stats = (await behaviour_store.get("eve")).stats("sms", T0, HALF_LIFE)
    assert (stats.converted, stats.value) == (pytest.approx(1.0), pytest.approx(42.5))


async def test_engagement_marks_the_user_active_and_keeps_the_latest_instant(behaviour_store: BehaviourStore):
    await behaviour_store.record(event("bob", "delivered", "sms", "m1"), HALF_LIFE)
    assert (await behaviour_store.get("bob")).last_active_at is None
    await behaviour_store.record(event("bob", "active", None, "", T0 + 7200), HALF_LIFE)
    await behaviour_store.record(event("bob", "opened", "sms", "m1", T0 + 3600), HALF_LIFE)  # older
    assert (await behaviour_store.get("bob")).last_active_at == datetime.fromtimestamp(T0 + 7200, UTC)


async def test_the_population_sums_everyones_attributed_counts(behaviour_store: BehaviourStore):
    for user in ("p1", "p2", "p3"):
        await behaviour_store.decided(sent(user, "m", "email", category="news"), HALF_LIFE)
    await behaviour_store.record(event("p1", "opened", "email", "m"), HALF_LIFE)
    await behaviour_store.record(event("p1", "opened", "email", "m"), HALF_LIFE)  # a repeat
    await behaviour_store.record(event("p2", "opened", "email", "m"), HALF_LIFE)
    population = await behaviour_store.population()
    stats = population.stats("news", "email", T0, HALF_LIFE)
    assert (stats.sent, stats.opened) == (pytest.approx(3.0), pytest.approx(2.0))
    assert population.counts["slot:wd12:opened"].at(T0, HALF_LIFE) == pytest.approx(2.0)


async def test_users_are_isolated(behaviour_store: BehaviourStore):
    await behaviour_store.record(event("ada", "opened", "email", "m1"), HALF_LIFE)
    assert await behaviour_store.get("bob") == Behaviour()


async def test_counts_written_before_the_engagement_model_read_as_plain_counts():
    from smart_dispatch.behaviour.redis import decode_behaviour

    behaviour = decode_behaviour({b"email:opened": b"3", b"active_ms": b"1780315200000"})
    assert behaviour.stats("email", T0, HALF_LIFE).opened == 3.0


async def test_sends_noted_on_the_decision_path_count_exactly_as_decided_ones(
    behaviour_store: BehaviourStore,
):
    # Given sends noted by the decision path (a store may write them a moment later, batched),
    # at different instants, one of them noted twice
    for index, user in enumerate(("n1", "n2", "n3")):
        await behaviour_store.note_sent(
            sent(user, "m", "email", category="digest", at_s=T0 + index * DAY), HALF_LIFE
        )
    await behaviour_store.note_sent(sent("n1", "m", "email", category="digest"), HALF_LIFE)
    # When an event arrives about one of them at once
    recorded = await behaviour_store.record(event("n2", "opened", "email", "m", T0 + DAY), HALF_LIFE)
    # Then it is counted against its send (its channel, slot and category known)
    assert recorded == Recorded(True, "email", "wd12", "digest", False)

    # and once everything is written, each send counted once, the population decayed exactly
    async def written() -> Behaviour | None:
        behaviour = await behaviour_store.get("n3")
        return behaviour if behaviour.counts else None

    await eventually(written, what="the noted sends written")
    assert (await behaviour_store.get("n1")).stats("email", T0, HALF_LIFE).sent == pytest.approx(1.0)
    population = await behaviour_store.population()
    at = T0 + 2 * DAY
    expected = sum(0.5 ** ((at - (T0 + i * DAY)) / HALF_LIFE) for i in range(3))
    assert population.stats("digest", "email", at, HALF_LIFE).sent == pytest.approx(expected)
    assert population.stats("digest", "email", at, HALF_LIFE).opened == pytest.approx(
        0.5 ** (DAY / HALF_LIFE)
    )
