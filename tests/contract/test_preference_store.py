"""The PreferenceStore contract (preferences/base.py), one suite on memory, one Redis and a Cluster.

Every change is made to the store under test and to the in-process reference
(`MemoryPreferenceStore`); the store must answer exactly what the reference does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time

import pytest
from smart_dispatch.errors import StoreUnavailableError
from smart_dispatch.preferences.base import (
    NO_PREFERENCES,
    PATHS,
    Consent,
    LocalWindow,
    Preferences,
    PreferenceStore,
    address_digest,
)
from smart_dispatch.preferences.memory import MemoryPreferenceStore
from smart_dispatch.stores import StoreOptions, Stores, stores_from_url

from tests.contract.conftest import PREFIX, TIMEOUT_S
from tests.contract.helpers import Backend
from tests.support.redis_servers import RedisServer

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
on_redis = pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)

FULL = Preferences(
    consents=(
        Consent("marketing", "*", False),
        Consent("marketing", "email", True),
        Consent("*", "sms", False),
    ),
    mute_until=T0 + timedelta(hours=30, microseconds=123_456),  # kept to the millisecond
    quiet_hours=LocalWindow(clock_time(22, 0), clock_time(7, 30)),
    channel_order=("in_app", "email", "sms"),
    locale="zh-CN",
)


class Twins:
    """The store under test and the reference, changed together."""

    def __init__(self, store: PreferenceStore) -> None:
        self.store = store
        self.reference = MemoryPreferenceStore()

    async def update(self, user: str, preferences: Preferences, paths: tuple[str, ...], at: datetime) -> None:
        stored = await self.store.update(user, preferences, paths, at)
        expected = await self.reference.update(user, preferences, paths, at)
        assert stored == expected
        assert await self.store.get(user) == stored

    async def set_consent(self, user: str, consent: Consent, at: datetime) -> Preferences:
        stored = await self.store.set_consent(user, consent, at)
        assert stored == await self.reference.set_consent(user, consent, at)
        assert await self.store.get(user) == stored
        return stored


def open_stores(url: str, timeout_s: float = TIMEOUT_S) -> Stores:
    return stores_from_url(url, StoreOptions(timeout_s=timeout_s, prefix=PREFIX))


@pytest.fixture
async def stores(backend: Backend) -> AsyncIterator[Stores]:
    opened = open_stores(backend.url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def twins(stores: Stores) -> Twins:
    return Twins(stores.preferences)


async def test_a_person_without_preferences_has_none(twins: Twins):
    assert await twins.store.get("nobody") == NO_PREFERENCES
    assert NO_PREFERENCES.updated_at is None


async def test_every_part_is_stored_and_read_back(twins: Twins):
    await twins.update("ada", FULL, PATHS, T0)

    stored = await twins.store.get("ada")
    assert stored.consents == (  # sorted, one per (category, channel)
        Consent("*", "sms", False),
        Consent("marketing", "*", False),
        Consent("marketing", "email", True),
    )
    assert stored.mute_until == T0 + timedelta(hours=30, microseconds=123_000)
    assert (stored.quiet_hours, stored.channel_order, stored.locale) == (
        FULL.quiet_hours,
        FULL.channel_order,
        "zh-CN",
    )
    assert stored.updated_at == T0
    assert await twins.store.get("bob") == NO_PREFERENCES  # nobody else's


async def test_an_update_replaces_only_the_named_parts(twins: Twins):
    await twins.update("ada", FULL, PATHS, T0)
    later = T0 + timedelta(minutes=5)

    await twins.update("ada", Preferences(locale="en-GB", channel_order=("sms",)), ("locale",), later)

    stored = await twins.store.get("ada")
    assert stored.locale == "en-GB"
    assert stored.channel_order == FULL.channel_order  # not named: kept
    assert len(stored.consents) == 3
    assert stored.mute_until == T0 + timedelta(hours=30, microseconds=123_000)
    assert stored.updated_at == later


async def test_empty_paths_replace_everything_and_unset_parts_are_cleared(twins: Twins):
    await twins.update("ada", FULL, PATHS, T0)

    await twins.update("ada", Preferences(locale="fr-FR"), (), T0 + timedelta(seconds=1))

    stored = await twins.store.get("ada")
    assert stored == Preferences(locale="fr-FR", updated_at=T0 + timedelta(seconds=1))


async def test_consents_are_replaced_as_a_whole(twins: Twins):
    await twins.update("ada", FULL, PATHS, T0)

    await twins.update("ada", Preferences(consents=(Consent("news", "push", False),)), ("consents",), T0)

    assert (await twins.store.get("ada")).consents == (Consent("news", "push", False),)


async def test_set_consent_adds_one_and_keeps_the_others(twins: Twins):
    await twins.update("ada", FULL, PATHS, T0)

    stored = await twins.set_consent("ada", Consent("marketing", "sms", False), T0 + timedelta(hours=1))
    await twins.set_consent("ada", Consent("marketing", "email", False), T0 + timedelta(hours=2))

    assert stored.locale == "zh-CN" and stored.updated_at == T0 + timedelta(hours=1)
    assert (await twins.store.get("ada")).consents == (
        Consent("*", "sms", False),
        Consent("marketing", "*", False),
        Consent("marketing", "email", False),  # replaced, not added twice
        Consent("marketing", "sms", False),
    )


async def test_set_consent_for_a_new_person_stores_just_it(twins: Twins):
    stored = await twins.set_consent("new", Consent("marketing", "sms", False), T0)

    assert stored == Preferences(consents=(Consent("marketing", "sms", False),), updated_at=T0)


async def test_concurrent_changes_lose_nothing(twins: Twins, backend: Backend):
    # Given another sidecar's stores on the same backend (memory: the same store)
    other = open_stores(backend.url) if backend.servers is not None else None
    second = other.preferences if other is not None else twins.store
    try:
        # When both change different parts of one person at once
        channels = ("sms", "email", "push", "in_app", "wechat", "webhook")
        await asyncio.gather(
            *(
                (twins.store if i % 2 else second).set_consent(
                    "ada", Consent("marketing", channel, False), T0
                )
                for i, channel in enumerate(channels)
            ),
            second.update("ada", Preferences(locale="de-DE"), ("locale",), T0),
        )

        # Then every change is there, seen from both
        for store in (twins.store, second):
            stored = await store.get("ada")
            assert set(stored.opted_out("marketing")) == set(channels)
            assert stored.locale == "de-DE"
    finally:
        if other is not None:
            await other.close()


@pytest.mark.redis
@on_redis
async def test_a_persons_preferences_live_in_their_slot_and_never_expire(twins: Twins, backend: Backend):
    await twins.update("ada", FULL, PATHS, T0)

    key = f"{PREFIX}:{{u:ada}}:prefs"
    found = []
    for node in backend.nodes:
        with node.client() as client:
            if key.encode() in set(client.scan_iter(f"{PREFIX}:*")):
                found.append(node)
                assert client.ttl(key) == -1  # a choice outlives inactivity
    assert len(found) == 1
    if backend.name == "cluster":  # the slot of the person's caps and behaviour
        with found[0].client() as client:
            slot = client.execute_command("CLUSTER", "KEYSLOT", key)
            assert slot == client.execute_command("CLUSTER", "KEYSLOT", f"{PREFIX}:{{u:ada}}:behaviour")


@pytest.mark.redis
async def test_store_down_fails_fast(private_redis: RedisServer):
    stores = open_stores(private_redis.url, timeout_s=0.25)
    try:
        await stores.preferences.update("ada", FULL, PATHS, T0)
        private_redis.stop()

        for call in (
            stores.preferences.get("ada"),
            stores.preferences.set_consent("ada", Consent("x", "sms", False), T0),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await call
            assert time.monotonic() - started < 1.0

        private_redis.start()  # empty: no persistence, no script cache
        assert await stores.preferences.set_consent("ada", Consent("x", "sms", False), T0) == Preferences(
            consents=(Consent("x", "sms", False),), updated_at=T0
        )
    finally:
        await stores.close()


async def test_a_dead_address_is_kept_beside_the_preferences_and_outlives_their_updates(
    twins: Twins, stores: Stores
):
    await twins.update("ada", FULL, PATHS, T0)
    old, new = address_digest("token-1"), address_digest("token-2")

    for store in (twins.store, twins.reference):
        await store.mark_invalid_address("ada", "push", old)
        await store.mark_invalid_address("ada", "push", new)  # one per channel: replaced
        await store.mark_invalid_address("ada", "ops_chat", old)

    stored = await twins.store.get("ada")
    assert stored == await twins.reference.get("ada")
    assert stored.invalid_addresses == (("ops_chat", old), ("push", new))
    assert stored.updated_at == T0  # not a choice of the person
    await twins.update("ada", Preferences(locale="fr-FR"), (), T0 + timedelta(seconds=1))  # all parts
    assert (await twins.store.get("ada")).invalid_addresses == stored.invalid_addresses

    # a person with nothing but a dead address; the decision's one round trip reads it
    await twins.store.mark_invalid_address("bob", "push", old)
    bob = await twins.store.get("bob")
    assert (bob.invalid_addresses, bob.updated_at, bob.consents) == ((("push", old),), None, ())
    assert (await stores.user_state.read("bob")).preferences.invalid_addresses == (("push", old),)
