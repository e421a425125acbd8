"""Dispatches in Redis: durable, shared by every sidecar and worker process.

Accepted = persisted: `create` stores the record and queues it in one script before `Dispatch`
returns. Ready work is a stream per lane (dispatch/lanes.py) read through the consumer group
`senders`, the lanes in their weighted turn; scheduled work
(deferred sends, retries, escalations) is a sorted set that `claim` promotes onto the stream when
due. A claimed entry that is not acked within `claim_timeout_s` (its worker crashed) is taken
over by another worker (XAUTOCLAIM). Key schema and script contracts: see `create.lua`.

Round trips, since each costs far more client CPU than the work Redis does for it: a stream
entry carries its record as queued, so `claim` is one XREADGROUP; the upkeep (promotion, takeover
of a crashed worker's entries) runs as one script every `_UPKEEP_EVERY_S` per store, not per
claim; the update that finishes a claim acks it in the same script, which also keeps the
dead-letter index in step with the record.

`watch` sees every version: while a record is watched (a marker key with a TTL), `update` also
appends each version to the record's change log, which the watcher reads with XREAD BLOCK.

Every key carries the hash tag `{d}`, so on Redis Cluster all dispatch keys live in one slot.
Failure modes: `StoreUnavailableError` when Redis cannot answer within `timeout_s`,
`StoreError` for other Redis errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from smart_dispatch._redis_guard import LuaRunner, LuaScript, guarded
from smart_dispatch.dispatch.lanes import LaneOrder
from smart_dispatch.dispatch.model import DispatchRecord, from_json, to_json
from smart_dispatch.dispatch.store import PROVIDER_MESSAGE_TTL_S, Claim, DispatchStore, Watch
from smart_dispatch.domain import LANES

GROUP = "senders"
_PROMOTE_BATCH = 500
_UPKEEP_EVERY_S = 0.1  # promotion of due work and takeover of a crashed worker's claims
_WATCH_BLOCK_S = 0.1  # one blocking read of a change log (bounded by timeout_s + this)
_WATCH_MARKER_S = 60  # a watch marker's lifetime; watchers renew it every third of that
_WATCH_BATCH = 100


CREATE, UPDATE, CLAIM = (
    LuaScript.load("smart_dispatch.dispatch", f"{n}.lua") for n in ("create", "update", "claim")
)


class RedisDispatchStore(DispatchStore):
    durable = True

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "sd",
        timeout_s: float = 0.25,
        claim_timeout_s: float = 30.0,
        retention_s: int = 7 * 86400,
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._claim_timeout_ms = int(claim_timeout_s * 1000)
        self._retention_s = retention_s
        base = f"{prefix}:{{d}}"
        self._ready = f"{base}:ready"
        self._streams = {lane: self._ready if lane == "normal" else f"{self._ready}:{lane}" for lane in LANES}
        self._lane_of = {stream: lane for lane, stream in self._streams.items()}
        self._order = LaneOrder()
        self._sched = f"{base}:sched"
        self._dead = f"{base}:dead"
        self._base = base
        self._rec_prefix = f"{base}:rec:"
        self._lua = LuaRunner.of(client, timeout_s)
        self._reclaim_cursors = dict.fromkeys(LANES, "0-0")
        self._upkeep_at = 0.0  # event-loop time of the next upkeep (claim.lua): at once
        self._group_ready = False

    def _rec(self, dispatch_id: str) -> str:
        return f"{self._rec_prefix}{dispatch_id}"

    def _msg(self, message_id: str) -> str:
        return f"{self._base}:msg:{message_id}"

    def _provider_id(self, provider: str, provider_message_id: str) -> str:
        return f"{self._base}:pmid:{len(provider)}:{provider}:{provider_message_id}"

    def _watched(self, dispatch_id: str) -> str:
        return f"{self._base}:watched:{dispatch_id}"

    def _changes(self, dispatch_id: str) -> str:
        return f"{self._base}:changes:{dispatch_id}"

    async def create(self, record: DispatchRecord) -> tuple[DispatchRecord, bool]:
        record = replace(record, version=1)
        due = "" if record.send_at is None else str(int(record.send_at.timestamp() * 1000))
        async with guarded(self._timeout_s):
            created, dispatch_id = await self._lua.run(
                CREATE,
                keys=[
                    self._msg(record.message.id),
                    self._rec(record.dispatch_id),
                    self._streams[record.lane],
                    self._sched,
                ],
                args=[record.dispatch_id, to_json(record), due, record.lane],
            )
        if int(created):
            return record, True
        existing = await self.get(_text(dispatch_id))
        assert existing is not None, "a message key always points at a stored record"
        return existing, False

    async def get(self, dispatch_id: str) -> DispatchRecord | None:
        async with guarded(self._timeout_s):
            raw = await self._client.hget(self._rec(dispatch_id), "json")
        return None if raw is None else from_json(raw)

    async def get_by_message(self, message_id: str) -> DispatchRecord | None:
        async with guarded(self._timeout_s):
            dispatch_id = await self._client.get(self._msg(message_id))
        return None if dispatch_id is None else await self.get(_text(dispatch_id))

    async def remember_provider_message(
        self, provider: str, provider_message_id: str, dispatch_id: str
    ) -> None:
        async with guarded(self._timeout_s):
            await self._client.set(
                self._provider_id(provider, provider_message_id), dispatch_id, ex=PROVIDER_MESSAGE_TTL_S
            )

    async def get_by_provider_message(self, provider: str, provider_message_id: str) -> DispatchRecord | None:
        async with guarded(self._timeout_s):
            dispatch_id = await self._client.get(self._provider_id(provider, provider_message_id))
        return None if dispatch_id is None else await self.get(_text(dispatch_id))

    async def update(
        self,
        record: DispatchRecord,
        expected_version: int,
        *,
        run_at: datetime | None = None,
        unschedule: bool = False,
        ack: Claim | None = None,
    ) -> DispatchRecord | None:
        # `unschedule` needs no work here: a scheduled entry carries the version it was queued
        # for, and workers skip entries whose version is stale.
        stored = replace(record, version=expected_version + 1)
        due = "" if run_at is None else str(int(run_at.timestamp() * 1000))
        retention = str(self._retention_s) if stored.state.terminal else ""
        receipt = "" if ack is None else ack.receipt
        async with guarded(self._timeout_s):
            ok = await self._lua.run(
                UPDATE,
                keys=[
                    self._rec(record.dispatch_id),
                    self._streams[record.lane],
                    self._sched,
                    self._msg(record.message.id),
                    self._watched(record.dispatch_id),
                    self._changes(record.dispatch_id),
                    self._dead,
                ],
                args=[
                    str(expected_version),
                    to_json(stored),
                    record.dispatch_id,
                    due,
                    retention,
                    GROUP,
                    receipt,
                    _WATCH_MARKER_S,
                    "1" if stored.dead_lettered else "0",
                    stored.lane,
                ],
            )
        return stored if int(ok) else None

    async def claim(self, consumer: str, count: int, wait_s: float) -> list[Claim]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            if loop.time() >= self._upkeep_at or not self._group_ready:
                self._upkeep_at = loop.time() + _UPKEEP_EVERY_S
                claims = await self._upkeep_and_claim(consumer, count)
                self._group_ready = True  # the script creates the consumer group when missing
                if claims:
                    self._upkeep_at = loop.time()  # it found work: there may be more (taken over)
                    return claims
            # New entries carry their record: one round trip, at once when work is waiting. The
            # wait is cut into slices so that some claimer does the upkeep on time.
            remaining = deadline - loop.time()
            block_s = min(remaining, self._upkeep_at - loop.time())
            lanes = self._order.next()
            async with guarded(self._timeout_s + max(0.0, block_s)):
                try:
                    # every lane in its turn's order: an entry of each lane with work may come
                    # back, handed out most urgent first (sorted below)
                    read: Any = await self._client.xreadgroup(
                        GROUP,
                        consumer,
                        {self._streams[lane]: ">" for lane in lanes},
                        count=count,
                        block=max(1, int(block_s * 1000)) if remaining > 0 else None,
                    )
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    self._group_ready = False  # the stream was deleted: the upkeep creates it again
                    continue
            claims = [
                await self._claim_of(entry, fields, self._lane_of[_text(stream)])
                for stream, found in read or []
                for entry, fields in found
                if fields
            ]
            claims.sort(key=lambda claim: lanes.index(claim.lane))
            if claims or loop.time() >= deadline:
                return claims

    async def _claim_of(self, entry: Any, fields: dict[bytes, bytes], lane: str) -> Claim:
        dispatch_id = _text(fields[b"id"])
        raw = fields.get(b"json")
        # an entry queued by an older version carries no record
        record = await self.get(dispatch_id) if raw is None else from_json(raw)
        return Claim(dispatch_id, int(fields[b"token"]), _text(entry), record, lane)

    async def _upkeep_and_claim(self, consumer: str, count: int) -> list[Claim]:
        """Promote due scheduled work, take over what crashed workers left, claim with records
        (the lanes in their turn's order)."""
        lanes = self._order.next()
        cursors = [value for lane in lanes for value in (lane, self._reclaim_cursors[lane])]
        async with guarded(self._timeout_s):
            reply: Any = await self._lua.run(
                CLAIM,
                keys=[self._sched, *(self._streams[lane] for lane in lanes)],
                args=[
                    GROUP,
                    consumer,
                    count,
                    self._claim_timeout_ms,
                    "",
                    self._rec_prefix,
                    _PROMOTE_BATCH,
                    self._ready,
                    *cursors,
                ],
            )
        moved = [_text(value) for value in reply[0]]
        self._reclaim_cursors.update(zip(moved[::2], moved[1::2], strict=True))
        return [
            Claim(
                _text(reply[i + 1]),
                int(reply[i + 2]),
                _text(reply[i]),
                _record(reply[i + 3]),
                _text(reply[i + 4]),
            )
            for i in range(1, len(reply), 5)
        ]

    async def ack(self, claim: Claim) -> None:
        async with guarded(self._timeout_s):
            pipe = self._client.pipeline(transaction=False)
            stream = self._streams.get(claim.lane, self._ready)
            pipe.xack(stream, GROUP, claim.receipt)
            pipe.xdel(stream, claim.receipt)
            await pipe.execute()

    def watch(self, dispatch_id: str) -> Watch:
        return _ChangeLogWatch(
            self._client, self._timeout_s, self._watched(dispatch_id), self._changes(dispatch_id)
        )

    async def dead_letters(self, limit: int) -> list[str]:
        """The oldest dead letters. Entries whose record is gone (dead letters stored before they
        were kept for good expired with the retention) are dropped from the index on the way."""
        async with guarded(self._timeout_s):
            ids = [_text(i) for i in await self._client.zrange(self._dead, 0, max(0, limit - 1))]
            if not ids:
                return []
            pipe = self._client.pipeline(transaction=False)
            for dispatch_id in ids:
                pipe.exists(self._rec(dispatch_id))
            present = await pipe.execute()
            gone = [i for i, there in zip(ids, present, strict=True) if not there]
            if gone:
                await self._client.zrem(self._dead, *gone)
        return [i for i, there in zip(ids, present, strict=True) if there]

    async def depth(self) -> dict[str, int]:
        """One pipelined round trip. A lane's stream holds its entries until they are acked (an
        ack deletes the entry), so ready = stream length - entries claimed and not acked yet."""
        async with guarded(self._timeout_s):
            pipe = self._client.pipeline(transaction=False)
            for lane in LANES:
                pipe.xlen(self._streams[lane])
                pipe.xpending(self._streams[lane], GROUP)
            pipe.zcard(self._sched)
            pipe.zcard(self._dead)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            for reply in replies:
                # a stream whose consumer group is not created yet answers NOGROUP: none claimed
                if isinstance(reply, Exception) and "NOGROUP" not in str(reply):
                    raise reply
        out = {}
        for index, lane in enumerate(LANES):
            length, pending = replies[2 * index], replies[2 * index + 1]
            claimed = pending["pending"] if isinstance(pending, dict) else 0
            out[lane] = max(0, int(length) - int(claimed))
        out["scheduled"], out["dead_letters"] = int(replies[-2]), int(replies[-1])
        return out


class _ChangeLogWatch(Watch):
    """Every version stored while subscribed: `update` appends each new version to the record's
    change log while its watch marker exists, and the watch reads that log (XREAD BLOCK, in
    short slices). Versions stored before `subscribe` returns may be missed: read the record
    after subscribing. Holds one pooled connection while it blocks."""

    def __init__(self, client: Redis | RedisCluster, timeout_s: float, marker: str, log: str) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._marker = marker
        self._log = log
        self._last = "0-0"
        self._renew_at = 0.0

    async def subscribe(self) -> None:
        # The marker first, then the log's newest entry: every version stored after that entry
        # is in the log (one stored in between is skipped here, but the record read after
        # subscribing has it).
        async with guarded(self._timeout_s):
            pipe = self._client.pipeline(transaction=False)
            pipe.set(self._marker, 1, ex=_WATCH_MARKER_S)
            pipe.xrevrange(self._log, "+", "-", count=1)
            _, newest = await pipe.execute()
        self._last = _text(newest[0][0]) if newest else "0-0"
        self._renew_at = asyncio.get_running_loop().time() + _WATCH_MARKER_S / 3

    async def changes(self) -> AsyncIterator[DispatchRecord]:
        loop = asyncio.get_running_loop()
        block_ms = int(_WATCH_BLOCK_S * 1000)
        while True:
            if loop.time() >= self._renew_at:
                self._renew_at = loop.time() + _WATCH_MARKER_S / 3
                async with guarded(self._timeout_s):
                    await self._client.set(self._marker, 1, ex=_WATCH_MARKER_S)
            async with guarded(self._timeout_s + _WATCH_BLOCK_S):
                reply: Any = await self._client.xread(
                    {self._log: self._last}, count=_WATCH_BATCH, block=block_ms
                )
            for _, entries in reply or []:
                for entry_id, fields in entries:  # yielded outside the guard: consumer time is not Redis time
                    self._last = _text(entry_id)
                    yield from_json(fields[b"json"])

    async def unsubscribe(self) -> None:
        return None  # the marker expires: other watchers of the same record may still need it


def _record(raw: bytes | str | None) -> DispatchRecord | None:
    return None if raw is None else from_json(raw)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
