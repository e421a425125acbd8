"""A provider under a rate limit (`rate: 100/s`, `burst: 20` in the providers file)."""

from __future__ import annotations

import asyncio

from smart_dispatch.channels.base import Delivery, Provider, ProviderError, SendResult
from smart_dispatch.ratelimit.base import RateLimiter

#: a wait up to this long is spent in place; a longer one is the sender pool's to schedule
SHORT_WAIT_S = 0.25


class OverRate(ProviderError):
    """The provider's rate has no slot for this send before `wait_s`: not a failure (the sender
    pool schedules the message for then, without counting an attempt or opening a breaker)."""

    def __init__(self, provider: str, channel: str, wait_s: float) -> None:
        super().__init__(
            f"over its rate: next slot in {wait_s:.2f}s",
            provider=provider,
            channel=channel,
            retryable=True,
            retry_after_s=wait_s,
            code="over_rate",
        )
        self.wait_s = wait_s


class RateLimitedProvider(Provider):
    def __init__(self, provider: Provider, limiter: RateLimiter, rate_per_s: float, burst: int) -> None:
        self.provider = provider
        self.channel = provider.channel
        self.name = provider.name
        self.limiter = limiter
        self.rate_per_s = rate_per_s
        self.burst = burst

    async def send(self, delivery: Delivery) -> SendResult:
        wait = await self.limiter.reserve(self.name, self.rate_per_s, self.burst, SHORT_WAIT_S)
        if wait > SHORT_WAIT_S:
            raise OverRate(self.name, self.channel, wait)
        if wait > 0:
            await asyncio.sleep(wait)
        return await self.provider.send(delivery)

    async def close(self) -> None:
        await self.provider.close()
