"""Provider rate limits on Redis: one `gcra.lua` call per send, shared by every sidecar."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from smart_dispatch._redis_guard import LuaRunner, LuaScript, guarded
from smart_dispatch.ratelimit.base import RateLimiter

GCRA = LuaScript.load("smart_dispatch.ratelimit", "gcra.lua")


class RedisRateLimiter(RateLimiter):
    def __init__(self, client: Redis | RedisCluster, *, prefix: str = "sd", timeout_s: float = 0.25) -> None:
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._lua = LuaRunner.of(client, timeout_s)

    async def reserve(self, key: str, rate_per_s: float, burst: int, max_wait_s: float) -> float:
        args: list[Any] = [f"{1e6 / rate_per_s:.0f}", burst, f"{max_wait_s * 1e6:.0f}"]
        async with guarded(self._timeout_s):
            wait_us = await self._lua.run(GCRA, [f"{self._prefix}:{{rl:{key}}}"], args)
        return int(wait_us) / 1e6
