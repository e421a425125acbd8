"""Behaviour in Redis: one hash per user, `<prefix>:{u:<user>}:behaviour` (the user's hash tag,
so it shares a Cluster slot with the user's caps).

Fields: `active_ms` (last activity, epoch ms) and `<channel>:<event>` counters. A user's hash
expires `ttl_s` after their last event (default 180 days): idle users cost nothing. A decision
reads the hash together with the list memberships (`redis_stores.RedisUserStateReader`: on one
server with user_state.lua, whose header documents this key schema too).
Failure modes: `StoreUnavailableError` / `StoreError` as for every Redis store.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from smart_dispatch._redis_guard import checked_prefix, guarded
from smart_dispatch.behaviour.base import (
    CHANNEL_EVENTS,
    ENGAGEMENTS,
    Behaviour,
    BehaviourStore,
    ChannelStats,
    EventKind,
)

# Keep the later of the stored and the new activity instant, atomically.
_MAX_ACTIVE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'active_ms') or '0')
if tonumber(ARGV[1]) > current then redis.call('HSET', KEYS[1], 'active_ms', ARGV[1]) end
return 1
"""


class RedisBehaviourStore(BehaviourStore):
    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "sd",
        timeout_s: float = 0.25,
        ttl_s: int = 180 * 86400,
    ) -> None:
        self._client = client
        self._prefix = checked_prefix(prefix)
        self._timeout_s = timeout_s
        self._ttl_s = ttl_s

    def key(self, user_id: str) -> str:
        return f"{self._prefix}:{{u:{user_id}}}:behaviour"

    async def record(self, user_id: str, event: EventKind, channel: str | None, at: datetime) -> None:
        key = self.key(user_id)
        async with guarded(self._timeout_s):
            pipe = self._client.pipeline(transaction=False)
            if channel is not None and event in CHANNEL_EVENTS:
                pipe.hincrby(key, f"{channel}:{event}", 1)
            if event in ENGAGEMENTS:
                pipe.eval(_MAX_ACTIVE, 1, key, int(at.timestamp() * 1000))
            pipe.expire(key, self._ttl_s)
            await pipe.execute()

    async def get(self, user_id: str) -> Behaviour:
        async with guarded(self._timeout_s):
            raw = await self._client.hgetall(self.key(user_id))
        return decode_behaviour(raw)


def decode_behaviour(raw: Mapping[Any, Any]) -> Behaviour:
    """A `Behaviour` from the user's hash as HGETALL returns it."""
    if not raw:
        return Behaviour()
    return _behaviour(raw.items())


def decode_behaviour_flat(flat: Sequence[Any], start: int = 0) -> Behaviour:
    """A `Behaviour` from the user's hash laid out flat, field then value, from `flat[start]` on
    (HGETALL's reply inside a script, e.g. user_state.lua's)."""
    if len(flat) <= start:
        return Behaviour()
    pairs = iter(flat[start:])
    return _behaviour(zip(pairs, pairs, strict=False))


def _behaviour(fields: Iterable[tuple[Any, Any]]) -> Behaviour:
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    active: datetime | None = None
    for field_b, value_b in fields:
        field = field_b.decode() if isinstance(field_b, bytes) else str(field_b)
        value = int(value_b)
        if field == "active_ms":
            active = datetime.fromtimestamp(value / 1000, UTC)
        elif ":" in field:
            channel, event = field.split(":", 1)
            if event in CHANNEL_EVENTS:
                counts[channel][event] = value
    return Behaviour(active, {channel: ChannelStats(**events) for channel, events in counts.items()})
