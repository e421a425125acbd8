"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_servers import RedisCluster, RedisServer, require_redis


@pytest.fixture
def require_redis_binary() -> None:
    """Skip locally, fail under CI=true, when redis-server is missing."""
    require_redis()


@pytest.fixture(scope="session")
def single_redis() -> Iterator[RedisServer]:
    """One private redis-server for the whole run (tests flush or prefix their keys)."""
    require_redis()
    with RedisServer.start_new() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One private 3-master Redis Cluster for the whole run."""
    require_redis()
    with RedisCluster.start_new() as cluster:
        yield cluster
