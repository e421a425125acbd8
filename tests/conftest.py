"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

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


@pytest.fixture
async def channel(app: Any) -> AsyncIterator[grpc.aio.Channel]:
    """A real channel to the directory's `app` fixture (a running App on a free port)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.SmartDispatchServiceStub:
    return pb_grpc.SmartDispatchServiceStub(channel)
