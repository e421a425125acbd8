"""The user-state read (user_state.py): what a decision reads about a person (list memberships,
behaviour, preferences), on memory, one Redis and a Cluster. The reference is `UserStateReader`
over the memory stores fed the same changes; the Redis reader must return exactly what it does,
in one round trip on one server (user_state.lua), and recover from a lost script cache, an
outage and a timed-out read."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time

import pytest
from smart_dispatch._redis_guard import DirectSender
from smart_dispatch.behaviour.base import Behaviour, BehaviourStore, EngagementEvent, EventKind
from smart_dispatch.behaviour.memory import MemoryBehaviourStore
from smart_dispatch.errors import StoreError, StoreUnavailableError
from smart_dispatch.lists.base import LIST_NAMES, ListName
from smart_dispatch.lists.memory import MemoryListStore
from smart_dispatch.preferences.base import PATHS, Consent, LocalWindow, Preferences
from smart_dispatch.preferences.memory import MemoryPreferenceStore
from smart_dispatch.stores import StoreOptions, Stores, stores_from_url
from smart_dispatch.stores.redis import USER_STATE_SHA, redis_client
from smart_dispatch.user_state import UserState, UserStateReader

from tests.contract.conftest import PREFIX, TIMEOUT_S
from tests.contract.helpers import Backend
from tests.support.redis_servers import RedisServer

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HALF_LIFE_S = 30 * 86400.0
on_redis = pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)

# (list, user) memberships and (user, event, channel, hours after T0) events of the scenario
MEMBERS: list[tuple[ListName, str]] = [
    ("allow", "vip"),
    ("deny", "blocked"),
    ("allow", "both"),
    ("deny", "both"),
    ("allow", "busy"),
    ("deny", "élève 7"),
]
EVENTS: list[tuple[str, EventKind, str | None, int]] = [
    ("counted", "delivered", "email", 0),
    ("counted", "delivered", "email", 1),
    ("counted", "bounced", "sms", 2),
    ("active", "active", None, 5),
    ("busy", "delivered", "email", 0),
    ("busy", "opened", "email", 1),
    ("busy", "clicked", "email", 2),
    ("busy", "delivered", "push", 3),
    ("busy", "failed", "push", 3),
    ("busy", "unsubscribed", "sms", 4),
    ("busy", "active", None, 9),
    ("busy", "opened", "push", 6),  # older than the latest activity: not the last_active_at
    ("élève 7", "clicked", "in_app", 1),
]
# (user, preferences) stored for the scenario
PREFERENCES: list[tuple[str, Preferences]] = [
    (
        "busy",
        Preferences(
            consents=(Consent("marketing", "sms", False), Consent("*", "email", True)),
            mute_until=T0 + timedelta(days=2, milliseconds=250),
            quiet_hours=LocalWindow(clock_time(22), clock_time(7, 30)),
            channel_order=("in_app", "email"),
            locale="de-DE",
        ),
    ),
    ("élève 7", Preferences(consents=(Consent("*", "*", False),), locale="fr-FR")),
]
USERS = ["vip", "blocked", "both", "busy", "counted", "active", "élève 7", "nobody"]


class Twins:
    """The stores under test and the memory reference, changed together."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.reference = UserStateReader(MemoryListStore(), MemoryBehaviourStore(), MemoryPreferenceStore())

    async def add(self, list_name: ListName, user_id: str) -> None:
        for lists in (self.stores.lists, self.reference.lists):
            await lists.add(list_name, user_id)

    async def remove(self, list_name: ListName, user_id: str) -> None:
        for lists in (self.stores.lists, self.reference.lists):
            await lists.remove(list_name, user_id)

    async def record(
        self, user_id: str, event: EventKind, channel: str | None, hours: int, message_id: str = ""
    ) -> None:
        behaviours: tuple[BehaviourStore, BehaviourStore] = (self.stores.behaviour, self.reference.behaviour)
        at_s = (T0 + timedelta(hours=hours)).timestamp()
        for behaviour in behaviours:
            await behaviour.record(EngagementEvent(user_id, event, channel, at_s, message_id), HALF_LIFE_S)

    async def prefer(self, user_id: str, preferences: Preferences) -> None:
        assert self.reference.preferences is not None
        for store in (self.stores.preferences, self.reference.preferences):
            await store.update(user_id, preferences, PATHS, T0)

    async def both(self, user_id: str) -> tuple[UserState, UserState]:
        return await self.stores.user_state.read(user_id), await self.reference.read(user_id)


def open_stores(url: str, timeout_s: float = TIMEOUT_S) -> Stores:
    return stores_from_url(url, StoreOptions(timeout_s=timeout_s, prefix=PREFIX))


@pytest.fixture
async def twins(backend: Backend) -> AsyncIterator[Twins]:
    stores = open_stores(backend.url)
    try:
        yield Twins(stores)
    finally:
        await stores.close()


async def fill(twins: Twins) -> None:
    for list_name, user in MEMBERS:
        await twins.add(list_name, user)
    for index, (user, event, channel, hours) in enumerate(EVENTS):
        await twins.record(user, event, channel, hours, f"m{index}")
    for user, preferences in PREFERENCES:
        await twins.prefer(user, preferences)


def command_calls(backend: Backend) -> Counter[str]:
    """Commands the nodes ran so far (a script's own calls included), less the inspection's."""
    calls: Counter[str] = Counter()
    for node in backend.nodes:
        for name, stats in node.info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            if command not in {"info", "hello", "client|setinfo"}:
                calls[command] += int(stats["calls"])
    return calls


def flush_scripts(backend: Backend) -> None:
    for node in backend.nodes:
        with node.client() as client:
            client.script_flush()


async def test_empty_stores_read_as_the_reference(twins: Twins):
    for user in USERS:
        actual, expected = await twins.both(user)
        assert actual == expected == UserState(frozenset(), Behaviour()), user


async def test_members_and_behaviour_read_as_the_reference(twins: Twins):
    await fill(twins)

    for user in USERS:
        actual, expected = await twins.both(user)
        assert actual == expected, user
    busy = (await twins.stores.user_state.read("busy")).behaviour
    assert busy.last_active_at == T0 + timedelta(hours=9)
    email, push, sms = busy.stats("email"), busy.stats("push"), busy.stats("sms")
    assert (email.delivered, email.opened, push.failed, sms.unsubscribed) == (1, 1, 1, 1)
    assert (await twins.stores.user_state.read("both")).memberships == frozenset(LIST_NAMES)
    preferences = (await twins.stores.user_state.read("busy")).preferences
    assert preferences.opted_out("marketing") == ("sms",)
    assert (preferences.locale, preferences.updated_at) == ("de-DE", T0)


async def test_the_read_equals_the_two_stores_read_separately(twins: Twins):
    await fill(twins)

    for user in USERS:
        state = await twins.stores.user_state.read(user)
        assert state == UserState(
            await twins.stores.lists.memberships(user),
            await twins.stores.behaviour.get(user),
            await twins.stores.preferences.get(user),
        ), user


async def test_list_changes_apply_to_the_next_read_of_every_reader(twins: Twins, backend: Backend):
    # Given a second sidecar's stores on the same backend (memory: no sharing, the same stores)
    other = open_stores(backend.url) if backend.servers is not None else twins.stores
    try:
        assert (await other.user_state.read("ada")).memberships == frozenset()

        # When one of them changes the lists, Then the other's next read sees it
        await twins.add("deny", "ada")
        assert (await other.user_state.read("ada")).memberships == frozenset({"deny"})
        await twins.add("allow", "ada")
        await twins.remove("deny", "ada")
        assert (await other.user_state.read("ada")).memberships == frozenset({"allow"})
        actual, expected = await twins.both("ada")
        assert actual == expected
    finally:
        if other is not twins.stores:
            await other.close()


@pytest.mark.parametrize("backend", [pytest.param("redis", marks=pytest.mark.redis)], indirect=True)
async def test_one_server_reads_in_one_evalsha(twins: Twins, backend: Backend):
    await fill(twins)
    await twins.stores.user_state.read("warm-up")  # loads the script

    for user in ("busy", "nobody"):
        before = command_calls(backend)
        await twins.stores.user_state.read(user)
        # the EVALSHA and the calls user_state.lua makes itself: nothing else was sent
        # (two HGETALL: the behaviour hash and the preferences hash)
        assert command_calls(backend) - before == Counter(evalsha=1, sismember=len(LIST_NAMES), hgetall=2)


@pytest.mark.redis
@on_redis
async def test_lost_script_cache_is_reloaded(twins: Twins, backend: Backend):
    await fill(twins)
    actual, expected = await twins.both("busy")
    assert actual == expected
    flush_scripts(backend)

    # one read after SCRIPT FLUSH, then a burst of concurrent ones after another
    actual, expected = await twins.both("busy")
    assert actual == expected
    flush_scripts(backend)
    reads = await asyncio.gather(*(twins.stores.user_state.read(user) for user in USERS * 4))
    assert reads == [await twins.reference.read(user) for user in USERS * 4]
    if backend.name == "redis":
        with backend.nodes[0].client() as client:
            assert client.script_exists(USER_STATE_SHA) == [True]


@pytest.mark.redis
@on_redis
async def test_a_redis_error_is_a_store_error_and_the_next_read_works(twins: Twins, backend: Backend):
    await fill(twins)
    await _set_string(backend, f"{PREFIX}:{{u:broken}}:behaviour")

    with pytest.raises(StoreError) as raised:
        await twins.stores.user_state.read("broken")
    assert not isinstance(raised.value, StoreUnavailableError)
    actual, expected = await twins.both("busy")
    assert actual == expected


async def _set_string(backend: Backend, key: str) -> None:
    """Put a string where a hash belongs (WRONGTYPE for HGETALL), on whichever node owns `key`."""
    client = redis_client(backend.url, TIMEOUT_S)
    try:
        await client.set(key, "not a hash")
    finally:
        await client.aclose()


async def assert_unavailable_fast(reader: UserStateReader, user_id: str, budget_s: float = 1.0) -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        await reader.read(user_id)
    assert time.monotonic() - started < budget_s


@pytest.mark.redis
async def test_store_down_fails_fast_and_recovers_on_the_same_port(private_redis: RedisServer):
    stores = open_stores(private_redis.url, timeout_s=0.25)
    try:
        await stores.lists.add("allow", "vip")
        assert (await stores.user_state.read("vip")).memberships == frozenset({"allow"})
        private_redis.stop()

        await assert_unavailable_fast(stores.user_state, "vip")

        private_redis.start()  # empty: no persistence, no script cache
        assert await stores.user_state.read("vip") == UserState(frozenset(), Behaviour())
        await stores.lists.add("deny", "vip")
        assert (await stores.user_state.read("vip")).memberships == frozenset({"deny"})
    finally:
        await stores.close()


@pytest.mark.redis
async def test_a_timed_out_read_leaves_no_reply_behind(private_redis: RedisServer):
    stores = open_stores(private_redis.url, timeout_s=0.25)
    try:
        await stores.lists.add("allow", "vip")
        await stores.behaviour.record(EngagementEvent("vip", "active", None, T0.timestamp()), HALF_LIFE_S)
        assert (await stores.user_state.read("vip")).memberships == frozenset({"allow"})

        # When the server stops answering, Then the read gives up within its bound
        private_redis.pause()
        try:
            await assert_unavailable_fast(stores.user_state, "vip")
        finally:
            private_redis.resume()

        # the late reply to the abandoned read went with its connection: the next read is nobody's
        assert await stores.user_state.read("nobody") == UserState(frozenset(), Behaviour())
        assert (await stores.user_state.read("vip")).behaviour.last_active_at == T0
    finally:
        await stores.close()


@pytest.mark.parametrize(
    ("argc", "head", "tail"),
    [
        (7, ("EVALSHA", "f" * 40, "3", "t:{list}:allow", "t:{list}:deny"), ("t:{u:é}:behaviour", "é")),
        (2, ("HGETALL",), (b"\r\n$*%d",)),
        (1, ("PING",), ()),
        (3, (), ("SET", "k", "x" * 7000)),
    ],
)
async def test_a_command_packed_in_two_parts_is_packed_as_redis_py_does(
    argc: int, head: tuple[str | bytes, ...], tail: tuple[str | bytes, ...]
):
    client = redis_client("redis://127.0.0.1:1/0", 1.0)
    try:
        sender = DirectSender.for_client(client, "EVALSHA", 1.0)
        assert sender is not None
        connection = client.connection_pool.make_connection()
        packed = sender.pack_head(argc, *head) + sender.pack_tail(*tail)
        assert packed == sender.pack(*head, *tail) == b"".join(connection.pack_command(*head, *tail))
    finally:
        await client.aclose()
