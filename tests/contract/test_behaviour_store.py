"""The BehaviourStore contract (behaviour/base.py), one suite on memory, one Redis and a Cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from smart_dispatch.behaviour.base import Behaviour, BehaviourStore, ChannelStats

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


async def test_an_unknown_user_has_no_behaviour(behaviour_store: BehaviourStore):
    assert await behaviour_store.get("nobody") == Behaviour()


async def test_events_are_counted_per_channel(behaviour_store: BehaviourStore):
    for kind in ("delivered", "delivered", "opened", "clicked", "bounced"):
        await behaviour_store.record("ada", kind, "email", T0)
    await behaviour_store.record("ada", "delivered", "sms", T0)

    behaviour = await behaviour_store.get("ada")

    assert behaviour.stats("email") == ChannelStats(delivered=2, opened=1, clicked=1, bounced=1)
    assert behaviour.stats("sms") == ChannelStats(delivered=1)
    assert behaviour.stats("push") == ChannelStats()
    assert behaviour.stats("email").engagement == (1 + 1 + 1) / (2 + 2)


async def test_engagement_marks_the_user_active_and_keeps_the_latest_instant(behaviour_store: BehaviourStore):
    await behaviour_store.record("bob", "delivered", "sms", T0)
    assert (await behaviour_store.get("bob")).last_active_at is None

    await behaviour_store.record("bob", "active", None, T0 + timedelta(hours=2))
    await behaviour_store.record("bob", "opened", "sms", T0 + timedelta(hours=1))  # older: ignored

    assert (await behaviour_store.get("bob")).last_active_at == T0 + timedelta(hours=2)


async def test_users_are_isolated(behaviour_store: BehaviourStore):
    await behaviour_store.record("ada", "opened", "email", T0)

    assert await behaviour_store.get("bob") == Behaviour()
