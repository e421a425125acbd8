"""Fixtures for the provider tests: HTTP sinks on loopback and Redis servers.

Every provider talks to a real server on 127.0.0.1 (an `aiohttp.web` app or an `aiosmtpd` SMTP
server started on a free port in the test's event loop); nothing of ours is mocked. Without
`redis-server` the Redis tests skip locally and FAIL under `CI=true`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.channels.helpers import Handler, HttpSink


@pytest.fixture
async def http_sink() -> AsyncIterator[Callable[[Handler], Awaitable[HttpSink]]]:
    """`await http_sink(handler)` starts a sink; all are stopped after the test."""
    sinks: list[HttpSink] = []

    async def start(handler: Handler) -> HttpSink:
        sink = await HttpSink(handler).start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        await sink.stop()


@pytest.fixture
async def release() -> AsyncIterator[asyncio.Event]:
    """Set at teardown: slow handlers wait on it so that no server task outlives the test."""
    event = asyncio.Event()
    yield event
    event.set()
