"""Provider rate limits (ratelimit/): the same GCRA on memory, one Redis and a Cluster. A send
over the rate is told when its slot comes, and takes it only when that is soon enough."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from smart_dispatch.ratelimit.base import RateLimiter
from smart_dispatch.stores import StoreOptions, stores_from_url

from tests.contract.helpers import Backend


@pytest.fixture
async def limiter(backend: Backend) -> AsyncIterator[RateLimiter]:
    stores = stores_from_url(backend.url, StoreOptions(timeout_s=2.0, prefix=f"t{secrets.token_hex(3)}"))
    try:
        yield stores.rate_limits
    finally:
        await stores.close()


async def test_a_burst_goes_at_once_then_sends_are_spaced_by_the_rate(limiter: RateLimiter):
    # 10 a second with a burst of 3: three now, then one every 100 ms (each taking its slot)
    waits = [await limiter.reserve("gw", 10.0, 3, 60.0) for _ in range(6)]

    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3], abs=0.03)


async def test_a_wait_longer_than_asked_for_is_reported_not_taken(limiter: RateLimiter):
    assert await limiter.reserve("slow", 2.0, 1, 0.0) == 0.0  # the one slot of this second
    # the next slot is half a second away: not taken while the caller only waits 100 ms
    first = await limiter.reserve("slow", 2.0, 1, 0.1)
    second = await limiter.reserve("slow", 2.0, 1, 0.1)
    assert 0.4 < second <= first <= 0.5
    await asyncio.sleep(first)
    assert await limiter.reserve("slow", 2.0, 1, 0.1) == pytest.approx(0.0, abs=0.05)


async def test_providers_are_limited_apart(limiter: RateLimiter):
    assert await limiter.reserve("a", 1.0, 1, 60.0) == 0.0
    assert await limiter.reserve("b", 1.0, 1, 60.0) == 0.0
    assert await limiter.reserve("a", 1.0, 1, 60.0) > 0.9
