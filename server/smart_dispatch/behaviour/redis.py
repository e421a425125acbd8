"""Behaviour in Redis: one hash per user, `<prefix>:{u:<user>}:behaviour` (the user's hash tag,
so it shares a Cluster slot with the user's caps), a short-lived hash per decided message, and
one hash of population counts. Key schema and the writes: engagement.lua (one script call per
decision written, two per event: the user's and the population's, which live in other slots).

A user's hash expires `ttl_s` after their last write (default 180 days): idle users cost
nothing. A decision reads the hash together with the list memberships
(`stores.redis.RedisUserStateReader`: on one server with user_state.lua, whose header documents
this key schema too). Counts written before the engagement model (plain integers) read as
undecayed counts. Failure modes: `StoreUnavailableError` / `StoreError` as for every Redis store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from smart_dispatch._redis_guard import LuaRunner, LuaScript, checked_prefix, guarded
from smart_dispatch.behaviour.base import (
    CHANNEL_EVENTS,
    ENGAGEMENTS,
    MESSAGE_TTL_S,
    Behaviour,
    BehaviourStore,
    Decayed,
    EngagementEvent,
    Population,
    Recorded,
    SentMessage,
    population_updates,
    prior_keys,
)

ENGAGEMENT = LuaScript.load("smart_dispatch.behaviour", "engagement.lua")


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
        self._lua = LuaRunner.of(client, timeout_s)

    def key(self, user_id: str) -> str:
        return f"{self._prefix}:{{u:{user_id}}}:behaviour"

    def message_key(self, user_id: str, message_id: str) -> str:
        return f"{self._prefix}:{{u:{user_id}}}:msg:{message_id}"

    @property
    def population_key(self) -> str:
        return f"{self._prefix}:{{pop}}:engagement"

    async def decided(self, sent: SentMessage, half_life_s: float) -> bool:
        keys = [self.key(sent.user_id), self.message_key(sent.user_id, sent.message_id)]
        args = ["D", repr(sent.at_s), repr(half_life_s), sent.channel, sent.slot, sent.category]
        async with guarded(self._timeout_s):
            first = await self._lua.run(ENGAGEMENT, keys, [*args, MESSAGE_TTL_S, self._ttl_s])
            if not first:
                return False
            population = [(f"{key}:{sent.channel}:sent", 1.0) for key in prior_keys(sent.category)]
            population.append((f"slot:{sent.slot}:sent", 1.0))
            await self._add_population(population, sent.at_s, half_life_s)
        return True

    async def record(self, event: EngagementEvent, half_life_s: float) -> Recorded:
        counted_kind = event.channel is not None and event.kind in CHANNEL_EVENTS and event.message_id
        engaged = "1" if event.kind in ENGAGEMENTS else "0"
        keys = [self.key(event.user_id), self.message_key(event.user_id, event.message_id or "-")]
        args: list[str | int] = [
            "E",
            repr(event.at_s),
            repr(half_life_s),
            event.kind,
            (event.channel or "") if counted_kind else "",
            repr(float(event.value)),
            engaged,
            MESSAGE_TTL_S,
            self._ttl_s,
        ]
        async with guarded(self._timeout_s):
            counted, channel, slot, category, sent_too = await self._lua.run(ENGAGEMENT, keys, args)
            recorded = Recorded(bool(counted), _text(channel), _text(slot), _text(category), bool(sent_too))
            updates = population_updates(recorded, event.kind, event.value)
            if updates:
                await self._add_population(updates, event.at_s, half_life_s)
        return recorded

    async def _add_population(
        self, updates: Sequence[tuple[str, float]], at_s: float, half_life_s: float
    ) -> None:
        args: list[Any] = ["P", repr(at_s), repr(half_life_s)]
        for name, amount in updates:
            args += [name, repr(amount)]
        await self._lua.run(ENGAGEMENT, [self.population_key], args)

    async def get(self, user_id: str) -> Behaviour:
        async with guarded(self._timeout_s):
            raw = await self._client.hgetall(self.key(user_id))
        return decode_behaviour(raw)

    async def population(self) -> Population:
        async with guarded(self._timeout_s):
            raw = await self._client.hgetall(self.population_key)
        return Population({_text(field): Decayed.decode(value) for field, value in raw.items()})


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
    counts: dict[str, Decayed] = {}
    active: datetime | None = None
    for field_b, value_b in fields:
        field = _text(field_b)
        if field == "active_ms":
            active = datetime.fromtimestamp(int(value_b) / 1000, UTC)
        elif ":" in field:
            counts[field] = Decayed.decode(value_b)
    return Behaviour(active, counts)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
