"""Behaviour in Redis: one hash per user, `<prefix>:{u:<user>}:behaviour` (the user's hash tag,
so it shares a Cluster slot with the user's caps), a short-lived hash per decided message, and
one hash of population counts. Key schema and the writes: engagement.lua (one script call per
decision written, two per event: the user's and the population's, which live in other slots).

A user's hash expires `ttl_s` after their last write (default 180 days): idle users cost
nothing. A decision reads the hash together with the list memberships
(`stores.redis.RedisUserStateReader`: on one server with user_state.lua, whose header documents
this key schema too). Counts written before the engagement model (plain integers) read as
undecayed counts. Failure modes: `StoreUnavailableError` / `StoreError` as for every Redis store.

The decision path's sends (`note_sent`) are written in batches, off the request: every
`SENT_FLUSH_S`, or at once when `SENT_BATCH` are waiting. A batch is one pipeline of the users'
script calls, then one of the population's (two round trips on one server, whatever its size;
the population's calls stay one per send, so its sums are the same floating-point additions in
the same order as unbatched, and a run on Redis scores as one on memory). A decision thus costs
the request two round trips fewer.
Reads settle first (`settle`): an event, a behaviour or user-state read of a person with sends
waiting, and a population read, write the batch before they go, so this process reads its own
writes (other sidecars see them at most `SENT_FLUSH_S` later); `close` writes what waits. A
failed batch costs the learning model those counts, never a decision (logged).
"""

from __future__ import annotations

import asyncio
import logging
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
from smart_dispatch.errors import StoreError

ENGAGEMENT = LuaScript.load("smart_dispatch.behaviour", "engagement.lua")
#: sends waiting to be written: at most this long, or this many
SENT_FLUSH_S = 0.05
SENT_BATCH = 64
log = logging.getLogger(__name__)


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
        self._sent: list[tuple[SentMessage, float]] = []
        self._sent_users: set[str] = set()
        self._flush: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()
        # batches on their way to Redis: their people, and when they are written
        self._in_flight: list[tuple[set[str], asyncio.Future[None]]] = []

    def key(self, user_id: str) -> str:
        return f"{self._prefix}:{{u:{user_id}}}:behaviour"

    def message_key(self, user_id: str, message_id: str) -> str:
        return f"{self._prefix}:{{u:{user_id}}}:msg:{message_id}"

    @property
    def population_key(self) -> str:
        return f"{self._prefix}:{{pop}}:engagement"

    async def decided(self, sent: SentMessage, half_life_s: float) -> bool:
        async with guarded(self._timeout_s):
            if not await self._decided_user(sent, half_life_s):
                return False
            await self._add_population(_sent_updates(sent), sent.at_s, half_life_s)
        return True

    async def _decided_user(self, sent: SentMessage, half_life_s: float) -> bool:
        keys = [self.key(sent.user_id), self.message_key(sent.user_id, sent.message_id)]
        args = ["D", repr(sent.at_s), repr(half_life_s), sent.channel, sent.slot, sent.category]
        return bool(await self._lua.run(ENGAGEMENT, keys, [*args, MESSAGE_TTL_S, self._ttl_s]))

    async def close(self) -> None:
        """Write the sends still waiting (bounded by the store timeout)."""
        await self._write_sent()
        if self._writing:
            await asyncio.wait(set(self._writing))

    async def note_sent(self, sent: SentMessage, half_life_s: float) -> None:
        self._sent.append((sent, half_life_s))
        self._sent_users.add(sent.user_id)
        if len(self._sent) >= SENT_BATCH:
            self._write_sent_soon(0.0)
        elif self._flush is None:
            self._write_sent_soon(SENT_FLUSH_S)

    def _write_sent_soon(self, delay_s: float) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        loop = asyncio.get_running_loop()
        if delay_s > 0:
            self._flush = loop.call_later(delay_s, self._write_sent_soon, 0.0)
            return
        task = loop.create_task(self._write_sent())
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write_sent(self) -> None:
        """Write the waiting sends: one pipeline of user scripts, one population call."""
        batch, self._sent = self._sent, []
        self._sent_users.clear()
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not batch:
            return
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        flight = ({sent.user_id for sent, _ in batch}, written)
        self._in_flight.append(flight)
        try:
            async with guarded(self._timeout_s * 4):  # a batch: more than one decision's work
                firsts = await asyncio.gather(*(self._decided_user(sent, hl) for sent, hl in batch))
                await asyncio.gather(
                    *(
                        self._add_population(_sent_updates(sent), sent.at_s, half_life_s)
                        for (sent, half_life_s), first in zip(batch, firsts, strict=True)
                        if first
                    )
                )
        except StoreError as exc:
            log.warning("%d sends not counted for learning: %s", len(batch), exc)
        finally:
            self._in_flight.remove(flight)
            written.set_result(None)

    async def settle(self, user_id: str | None = None) -> None:
        if self._sent and (user_id is None or user_id in self._sent_users):
            await self._write_sent()
        # and a batch already on its way with this person's sends: its end (an event must not
        # overtake its send; on a Cluster the two go on different connections)
        waiting = [done for users, done in self._in_flight if user_id is None or user_id in users]
        if waiting:
            await asyncio.wait(waiting)

    async def record(self, event: EngagementEvent, half_life_s: float) -> Recorded:
        await self.settle(event.user_id)  # the person's sends first: the event counts against them
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
        await self.settle(user_id)
        async with guarded(self._timeout_s):
            raw = await self._client.hgetall(self.key(user_id))
        return decode_behaviour(raw)

    async def population(self) -> Population:
        await self.settle()
        async with guarded(self._timeout_s):
            raw = await self._client.hgetall(self.population_key)
        return Population({_text(field): Decayed.decode(value) for field, value in raw.items()})


def _sent_updates(sent: SentMessage) -> list[tuple[str, float]]:
    """The population counts one send adds to."""
    updates = [(f"{key}:{sent.channel}:sent", 1.0) for key in prior_keys(sent.category)]
    updates.append((f"slot:{sent.slot}:sent", 1.0))
    return updates


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
