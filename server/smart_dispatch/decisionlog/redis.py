"""The decision log and analytics counts on Redis, shared by every sidecar of the store.

Keys (prefix `sd`): the index `sd:{log}:idx` (sorted set: message id by decided-at ms), entries
`sd:{log}:m:<message id>` (JSON), histories `sd:{log}:h:<message id>` (list of JSON), all in the
`{log}` slot; day counts `sd:{stats}:<YYYY-MM-DD>` (hash of count fields, see base.py). A write
is one append.lua call (entries, history events and the bounds) plus one pipeline of
HINCRBYFLOATs for the counts; a flush of the writer is one write.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from smart_dispatch._redis_guard import LuaRunner, LuaScript, checked_prefix, guarded
from smart_dispatch.decisionlog.base import COUNT_RETENTION_DAYS, DecisionLogStore, Entry, LogBatch

APPEND = LuaScript.load("smart_dispatch.decisionlog", "append.lua")
_SCAN_PAGE = 500


class RedisDecisionLog(DecisionLogStore):
    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "sd",
        timeout_s: float = 0.25,
        retention_s: float = 7 * 86400.0,
        max_entries: int = 1_000_000,
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        prefix = checked_prefix(prefix)
        self._head = f"{prefix}:{{log}}:"
        self._index = f"{self._head}idx"
        self._stats = f"{prefix}:{{stats}}:"
        self._retention_ms = int(retention_s * 1000)
        self._max = max(1, max_entries)
        self._lua = LuaRunner.of(client, timeout_s)

    async def write(self, batch: LogBatch) -> None:
        if batch.entries or batch.events:
            args: list[str | int] = [self._head, self._retention_ms, self._max, len(batch.entries)]
            for entry in batch.entries:
                args += [entry["message_id"], entry["at_ms"], _json(entry)]
            for message_id, event in batch.events:
                args += [message_id, _json(event)]
            async with guarded(self._timeout_s * 4):  # a batch: more than one decision's work
                await self._lua.run(APPEND, [self._index], args)
        if batch.counts:
            async with guarded(self._timeout_s * 4):
                pipe = self._client.pipeline(transaction=False)
                days = set()
                for (day, name), amount in batch.counts.items():
                    pipe.hincrbyfloat(self._stats + day, name, amount)
                    days.add(day)
                for day in days:
                    pipe.expire(self._stats + day, COUNT_RETENTION_DAYS * 86400)
                await pipe.execute()

    async def get(self, message_id: str) -> Entry | None:
        async with guarded(self._timeout_s):
            pipe = self._client.pipeline(transaction=False)
            pipe.get(f"{self._head}m:{message_id}")
            pipe.lrange(f"{self._head}h:{message_id}", 0, -1)
            raw, history = await pipe.execute()
        if raw is None:
            return None
        entry: Entry = json.loads(raw)
        entry["history"] = [json.loads(event) for event in history]
        return entry

    async def dims(self, message_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        if not message_ids:
            return {}
        unique = list(dict.fromkeys(message_ids))
        async with guarded(self._timeout_s):
            raws = await self._client.mget([f"{self._head}m:{m}" for m in unique])
        return {m: json.loads(raw)["dims"] for m, raw in zip(unique, raws, strict=True) if raw is not None}

    async def scan(self, since_ms: int, until_ms: int) -> AsyncIterator[Entry]:
        offset = 0
        while True:
            async with guarded(self._timeout_s):
                page = await self._client.zrangebyscore(
                    self._index, since_ms, f"({until_ms}", start=offset, num=_SCAN_PAGE
                )
                raws = await self._client.mget([f"{self._head}m:{_text(m)}" for m in page]) if page else []
            for raw in raws:
                if raw is not None:
                    yield json.loads(raw)
            if len(page) < _SCAN_PAGE:
                return
            offset += len(page)

    async def counts(self, days: Sequence[str]) -> dict[str, dict[str, float]]:
        async with guarded(self._timeout_s * 4):
            pipe = self._client.pipeline(transaction=False)
            for day in days:
                pipe.hgetall(self._stats + day)
            replies = await pipe.execute()
        return {
            day: {_text(k): float(v) for k, v in reply.items()}
            for day, reply in zip(days, replies, strict=True)
            if reply
        }


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
