"""Fixtures for the store contract suites: every test runs on memory, one Redis and a Cluster.

The Redis servers are private processes started once per session (tests/support/redis_servers.py);
every node is flushed before each test, so each test starts from empty stores. Without
`redis-server` the Redis variants skip locally and FAIL under `CI=true`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from smart_dispatch.behaviour.base import BehaviourStore
from smart_dispatch.counters.base import CounterStore
from smart_dispatch.lists.base import ListStore
from smart_dispatch.stores import StoreOptions, stores_from_url

from tests.contract.helpers import Backend
from tests.support.redis_servers import RedisCluster, RedisServer, require_redis

TIMEOUT_S = 2.0  # generous: a loaded CI machine must not turn into flaky timeouts
PREFIX = "t"


BACKENDS = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("cluster", marks=pytest.mark.redis),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """The backend of this test, its Redis nodes flushed."""
    name: str = request.param
    if name == "memory":
        return Backend(name, "memory://", None)
    servers: RedisServer | RedisCluster = request.getfixturevalue(
        "single_redis" if name == "redis" else "redis_cluster"
    )
    servers.flushall()
    return Backend(name, servers.url, servers)


@pytest.fixture
async def counter_store(backend: Backend) -> AsyncIterator[CounterStore]:
    stores = stores_from_url(backend.url, StoreOptions(timeout_s=TIMEOUT_S, prefix=PREFIX))
    try:
        yield stores.counters
    finally:
        await stores.close()


@pytest.fixture
async def list_store(backend: Backend) -> AsyncIterator[ListStore]:
    """A list store holding "vip" on the allow list and "blocked" on the deny list."""
    stores = stores_from_url(backend.url, StoreOptions(timeout_s=TIMEOUT_S, prefix=PREFIX))
    try:
        await stores.lists.add("allow", "vip")
        await stores.lists.add("deny", "blocked")
        yield stores.lists
    finally:
        await stores.close()


@pytest.fixture
async def behaviour_store(backend: Backend) -> AsyncIterator[BehaviourStore]:
    stores = stores_from_url(backend.url, StoreOptions(timeout_s=TIMEOUT_S, prefix=PREFIX))
    try:
        yield stores.behaviour
    finally:
        await stores.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A server of this test alone, free to be stopped and restarted (outage tests)."""
    require_redis()
    with RedisServer.start_new() as server:
        yield server


@pytest.fixture
def private_cluster() -> Iterator[RedisCluster]:
    """A cluster of this test alone (outage tests)."""
    require_redis()
    with RedisCluster.start_new() as cluster:
        yield cluster
