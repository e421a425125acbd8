"""One behavioural suite for every inbox store (memory, one Redis, a Redis Cluster), plus the
in-app provider that delivers into it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from smart_dispatch.channels.base import Content, ProviderError
from smart_dispatch.channels.in_app import InboxProvider
from smart_dispatch.errors import InvalidRequestError, StoreUnavailableError
from smart_dispatch.inbox.base import InboxItem, InboxStore
from smart_dispatch.inbox.memory import MemoryInboxStore
from smart_dispatch.inbox.redis import RedisInboxStore
from smart_dispatch.stores.redis import redis_client

from tests.channels.helpers import delivery
from tests.support.redis_servers import RedisCluster, RedisServer, free_port, require_redis

TIMEOUT_S = 2.0
BACKENDS = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("cluster", marks=pytest.mark.redis),
]


def make_store(request: pytest.FixtureRequest, name: str, **options: object) -> InboxStore:
    if name == "memory":
        return MemoryInboxStore(**options)  # type: ignore[arg-type]
    servers: RedisServer | RedisCluster = request.getfixturevalue(
        "single_redis" if name == "redis" else "redis_cluster"
    )
    servers.flushall()
    client = redis_client(servers.url, TIMEOUT_S)
    return RedisInboxStore(client, prefix="t", timeout_s=TIMEOUT_S, **options)  # type: ignore[arg-type]


async def close(store: InboxStore) -> None:
    """Close `store` and, on Redis, the client it was given (a store leaves it open)."""
    await store.close()
    if isinstance(store, RedisInboxStore):
        await store.client.aclose()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[InboxStore]:
    inbox = make_store(request, request.param)
    yield inbox
    await close(inbox)


def item(text: str, **fields: object) -> InboxItem:
    values: dict[str, object] = {"id": "", "dispatch_id": "d-1", "message_id": f"m-{text}", "text": text}
    values.update(fields)
    return InboxItem(**values)  # type: ignore[arg-type]


async def test_items_are_listed_newest_first_with_all_fields(store: InboxStore) -> None:
    created = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    first = await store.append("u-1", item("one", title="T", data={"k": [1, "x"]}, created_at=created))
    second = await store.append("u-1", item("two"))

    listed = await store.list("u-1", 10)

    assert [i.id for i in listed] == [second, first]
    assert listed[1] == InboxItem(
        id=first,
        dispatch_id="d-1",
        message_id="m-one",
        text="one",
        title="T",
        data={"k": [1, "x"]},
        created_at=created,
    )


async def test_inboxes_are_separate_and_unknown_ones_are_empty(store: InboxStore) -> None:
    await store.append("u-1", item("one"))

    assert await store.list("u-2", 10) == []


async def test_pages_with_limit_and_before_id(store: InboxStore) -> None:
    ids = [await store.append("u-1", item(str(n))) for n in range(5)]

    page1 = await store.list("u-1", 2)
    page2 = await store.list("u-1", 2, before_id=page1[-1].id)
    page3 = await store.list("u-1", 2, before_id=page2[-1].id)

    assert [i.text for i in page1 + page2 + page3] == ["4", "3", "2", "1", "0"]
    assert [i.id for i in page1 + page2 + page3] == ids[::-1]


async def test_same_idempotency_key_appends_once(store: InboxStore) -> None:
    first = await store.append("u-1", item("once"), idempotency_key="d-1:0")
    again = await store.append("u-1", item("once"), idempotency_key="d-1:0")
    other = await store.append("u-1", item("twice"), idempotency_key="d-2:0")

    assert first == again != other
    assert [i.text for i in await store.list("u-1", 10)] == ["twice", "once"]


async def test_watch_yields_items_appended_after_it_starts_in_order(store: InboxStore) -> None:
    await store.append("u-1", item("old"))
    watcher = store.watch("u-1")
    next_item = asyncio.ensure_future(anext(watcher))
    await asyncio.sleep(0.05)  # let the watcher find its starting point

    await store.append("u-2", item("elsewhere"))
    for n in (1, 2, 3):
        await store.append("u-1", item(f"new-{n}"))

    async with asyncio.timeout(5):
        got = [(await next_item).text, (await anext(watcher)).text]
    await watcher.aclose()  # type: ignore[attr-defined]
    # Normally new-1, new-2; on a machine so slow that the start point was taken after new-1,
    # new-2, new-3. Never "old", never another inbox's item, never out of order.
    assert got in (["new-1", "new-2"], ["new-2", "new-3"])


async def test_watch_after_id_resumes_without_a_gap(store: InboxStore) -> None:
    seen = await store.append("u-1", item("seen"))
    await store.append("u-1", item("missed-1"))
    await store.append("u-1", item("missed-2"))

    watcher = store.watch("u-1", after_id=seen)
    async with asyncio.timeout(5):
        got = [(await anext(watcher)).text, (await anext(watcher)).text]
    await watcher.aclose()  # type: ignore[attr-defined]

    assert got == ["missed-1", "missed-2"]


async def test_invalid_arguments_name_the_field(store: InboxStore) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await store.list("u-1", 10, before_id="yesterday")
    assert caught.value.field == "before_id"
    with pytest.raises(InvalidRequestError) as caught:
        await store.list("u-1", 0)
    assert caught.value.field == "limit"
    with pytest.raises(InvalidRequestError) as caught:
        await store.append("", item("x"))
    assert caught.value.field == "inbox_id"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_old_items_are_dropped_beyond_max_items(request: pytest.FixtureRequest, backend: str) -> None:
    store = make_store(request, backend, max_items=10)
    try:
        for n in range(250):
            await store.append("u-1", item(str(n)))
        kept = await store.list("u-1", 1000)
    finally:
        await close(store)

    assert 10 <= len(kept) < 250  # Redis trims approximately (whole stream nodes)
    assert kept[0].text == "249"


async def test_in_app_provider_appends_once_per_step(store: InboxStore) -> None:
    provider = InboxProvider(store)
    content = Content(text="Your code is 123", title="Sign-in", fields={"code": "123"})

    result = await provider.send(delivery("in_app", address="u-1", content=content))
    retried = await provider.send(delivery("in_app", address="u-1", content=content, attempt=2))

    assert (result.provider, result.provider_message_id) == ("inbox", retried.provider_message_id)
    [stored] = await store.list("u-1", 10)
    assert (stored.id, stored.text, stored.title, stored.data) == (
        result.provider_message_id,
        "Your code is 123",
        "Sign-in",
        {"code": "123"},
    )
    assert (stored.dispatch_id, stored.message_id) == ("d-1", "m-1")


async def test_in_app_provider_fails_permanently_only_for_an_empty_address() -> None:
    with pytest.raises(ProviderError) as caught:
        await InboxProvider(MemoryInboxStore()).send(delivery("in_app", address=""))

    assert (caught.value.retryable, caught.value.code) == (False, "invalid_address")


async def test_in_app_provider_store_down_is_retryable() -> None:
    store = RedisInboxStore(redis_client(f"redis://127.0.0.1:{free_port()}/0", 0.5), timeout_s=0.5)
    try:
        with pytest.raises(ProviderError) as caught:
            await InboxProvider(store).send(delivery("in_app", address="u-1"))
    finally:
        await close(store)

    assert (caught.value.retryable, caught.value.code) == (True, "store")


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_idle_watch_outlasts_the_short_socket_timeout(
    request: pytest.FixtureRequest, backend: str
) -> None:
    # Given a store whose client gives up on a socket read after 0.2 s (like production's 0.25 s)
    servers = request.getfixturevalue("single_redis" if backend == "redis" else "redis_cluster")
    store = RedisInboxStore(redis_client(servers.url, 0.2), prefix="idle", timeout_s=0.2)
    watcher = store.watch("u-1")
    next_item = asyncio.ensure_future(anext(watcher))
    try:
        # When nothing arrives for several socket timeouts, then an item does
        await asyncio.sleep(0.7)
        assert not next_item.done()  # still waiting, not failed
        await store.append("u-1", item("late"))
        # Then the watcher yields it
        async with asyncio.timeout(5):
            assert (await next_item).text == "late"
    finally:
        next_item.cancel()
        await watcher.aclose()  # type: ignore[attr-defined]
        await close(store)


@pytest.mark.redis
async def test_watch_of_a_frozen_redis_fails_instead_of_hanging() -> None:
    require_redis()
    with RedisServer.start_new() as server:
        store = RedisInboxStore(redis_client(server.url, 0.2), prefix="frozen", timeout_s=0.2)
        watcher = store.watch("u-1")
        try:
            next_item = asyncio.ensure_future(anext(watcher))
            await asyncio.sleep(0.1)
            server.pause()
            with pytest.raises(StoreUnavailableError):
                async with asyncio.timeout(10):
                    await next_item
        finally:
            server.resume()
            await watcher.aclose()  # type: ignore[attr-defined]
            await close(store)
