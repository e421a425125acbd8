"""Dispatches in Redis: durable, shared by every sidecar and worker process.

Accepted = persisted: `create` stores the record and queues it in one script before `Dispatch`
returns. Ready work is a stream read through the consumer group `senders`; scheduled work
(deferred sends, retries, escalations) is a sorted set that `claim` promotes onto the stream when
due. A claimed entry that is not acked within `claim_timeout_s` (its worker crashed) is taken
over by another worker (XAUTOCLAIM). Key schema and script contracts: see `create.lua`.

Every key carries the hash tag `{d}`, so on Redis Cluster all dispatch keys live in one slot.
Failure modes: `StoreUnavailableError` when Redis cannot answer within `timeout_s`,
`StoreError` for other Redis errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from smart_dispatch._redis_guard import guarded
from smart_dispatch.dispatch.model import DispatchRecord, from_json, to_json
from smart_dispatch.dispatch.store import Claim, DispatchStore, Watch

GROUP = "senders"
_PROMOTE_BATCH = 500
_BLOCK_SLICE_S = 0.1
_WATCH_POLL_S = 0.1


def _script(client: Redis | RedisCluster, name: str) -> Any:
    source = resources.files("smart_dispatch.dispatch").joinpath(name).read_text("utf-8")
    return client.register_script(source)  # EVALSHA, loading the script on NOSCRIPT


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
        self._sched = f"{base}:sched"
        self._dead = f"{base}:dead"
        self._base = base
        self._create = _script(client, "create.lua")
        self._update = _script(client, "update.lua")
        self._promote = _script(client, "promote.lua")
        self._group_ready = False
        self._reclaim_cursor = "0-0"

    def _rec(self, dispatch_id: str) -> str:
        return f"{self._base}:rec:{dispatch_id}"

    def _msg(self, message_id: str) -> str:
        return f"{self._base}:msg:{message_id}"

    async def create(self, record: DispatchRecord) -> tuple[DispatchRecord, bool]:
        record = replace(record, version=1)
        due = "" if record.send_at is None else str(int(record.send_at.timestamp() * 1000))
        async with guarded(self._timeout_s):
            created, dispatch_id = await self._create(
                keys=[self._msg(record.message.id), self._rec(record.dispatch_id), self._ready, self._sched],
                args=[record.dispatch_id, to_json(record), due],
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

    async def update(
        self,
        record: DispatchRecord,
        expected_version: int,
        *,
        run_at: datetime | None = None,
        unschedule: bool = False,
    ) -> DispatchRecord | None:
        # `unschedule` needs no work here: a scheduled entry carries the version it was queued
        # for, and workers skip entries whose version is stale.
        stored = replace(record, version=expected_version + 1)
        due = "" if run_at is None else str(int(run_at.timestamp() * 1000))
        retention = str(self._retention_s) if stored.state.terminal else ""
        async with guarded(self._timeout_s):
            ok = await self._update(
                keys=[self._rec(record.dispatch_id), self._ready, self._sched, self._msg(record.message.id)],
                args=[str(expected_version), to_json(stored), record.dispatch_id, due, retention],
            )
        return stored if int(ok) else None

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._client.xgroup_create(self._ready, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def claim(self, consumer: str, count: int, wait_s: float) -> list[Claim]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            async with guarded(self._timeout_s):
                await self._ensure_group()
                await self._promote(keys=[self._sched, self._ready], args=[_PROMOTE_BATCH])
                claims = await self._reclaim(consumer, count)
                if not claims:
                    block_ms = max(1, int(min(_BLOCK_SLICE_S, max(0.0, deadline - loop.time())) * 1000))
                    reply: Any = await self._client.xreadgroup(
                        GROUP, consumer, {self._ready: ">"}, count=count, block=block_ms
                    )
                    claims = [
                        _claim(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries
                    ]
            if claims or loop.time() >= deadline:
                return claims

    async def _reclaim(self, consumer: str, count: int) -> list[Claim]:
        """Entries another consumer claimed and did not ack within the claim timeout."""
        reply: Any = await self._client.xautoclaim(
            self._ready, GROUP, consumer, self._claim_timeout_ms, start_id=self._reclaim_cursor, count=count
        )
        self._reclaim_cursor = _text(reply[0])
        return [_claim(entry_id, fields) for entry_id, fields in reply[1] if fields]

    async def ack(self, claim: Claim) -> None:
        async with guarded(self._timeout_s):
            pipe = self._client.pipeline(transaction=False)
            pipe.xack(self._ready, GROUP, claim.receipt)
            pipe.xdel(self._ready, claim.receipt)
            await pipe.execute()

    def watch(self, dispatch_id: str) -> Watch:
        return _PollingWatch(self, dispatch_id)

    async def version_of(self, dispatch_id: str) -> int | None:
        async with guarded(self._timeout_s):
            raw = await self._client.hget(self._rec(dispatch_id), "v")
        return None if raw is None else int(raw)

    async def dead_letters(self, limit: int) -> list[str]:
        async with guarded(self._timeout_s):
            ids = await self._client.zrange(self._dead, 0, max(0, limit - 1))
        return [_text(i) for i in ids]

    async def set_dead_letter(self, dispatch_id: str, dead: bool) -> None:
        async with guarded(self._timeout_s):
            if dead:
                await self._client.zadd(self._dead, {dispatch_id: time.time()}, nx=True)
            else:
                await self._client.zrem(self._dead, dispatch_id)


class _PollingWatch(Watch):
    """Watches a record by polling its version (cheap, and works on Cluster alike)."""

    def __init__(self, store: RedisDispatchStore, dispatch_id: str) -> None:
        self._store = store
        self._id = dispatch_id
        self._seen = 0

    async def subscribe(self) -> None:
        self._seen = await self._store.version_of(self._id) or 0

    async def changes(self) -> AsyncIterator[DispatchRecord]:
        while True:
            await asyncio.sleep(_WATCH_POLL_S)
            version = await self._store.version_of(self._id)
            if version is not None and version > self._seen:
                record = await self._store.get(self._id)
                if record is not None:
                    self._seen = record.version
                    yield record

    async def unsubscribe(self) -> None:
        return None


def _claim(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Claim:
    return Claim(_text(fields[b"id"]), int(fields[b"token"]), _text(entry_id))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
