"""Provider rate limits on Redis: one `gcra.lua` call per send, shared by every sidecar."""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from smart_dispatch._redis_guard import guarded
from smart_dispatch.ratelimit.base import RateLimiter

GCRA_LUA = resources.files("smart_dispatch.ratelimit").joinpath("gcra.lua").read_text("utf-8")


class RedisRateLimiter(RateLimiter):
    def __init__(self, client: Redis | RedisCluster, *, prefix: str = "sd", timeout_s: float = 0.25) -> None:
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._script = client.register_script(GCRA_LUA)  # EVALSHA, loading on NOSCRIPT

    async def reserve(self, key: str, rate_per_s: float, burst: int, max_wait_s: float) -> float:
        args: list[Any] = [f"{1e6 / rate_per_s:.0f}", burst, f"{max_wait_s * 1e6:.0f}"]
        async with guarded(self._timeout_s):
            wait_us = await self._script([f"{self._prefix}:{{rl:{key}}}"], args)
        return int(wait_us) / 1e6
