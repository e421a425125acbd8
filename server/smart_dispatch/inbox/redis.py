"""Inboxes in Redis: one stream per inbox, shared by every sidecar on the same Redis.

Keys (the `{inbox:<id>}` hash tag keeps one inbox's keys in one Redis Cluster slot):

    <prefix>:{inbox:<id>}:items          stream; fields dispatch_id, message_id, text, title,
                                         data (JSON), created_at (ISO 8601, UTC)
    <prefix>:{inbox:<id>}:key:<key>      idempotency marker holding the item id; expires after
                                         `idempotency_ttl_s`

Operations: `append` is one XADD with ``MAXLEN ~ max_items`` (or, with an idempotency key, one
script that checks the marker, XADDs and sets the marker atomically); `list` is one XREVRANGE;
`watch` repeats ``XREAD BLOCK`` from the last id seen.

Blocking reads: every read is bounded by `asyncio.timeout` (`timeout_s`, plus the BLOCK time for
`watch`), and Redis ends a BLOCK only on its server tick (100 ms at the default `hz 10`), so a
read blocks for up to ~150 ms longer than asked. Without a `watch_client`, `watch` therefore
blocks in slices of `min(timeout_s / 2, timeout_s - 0.15 s)` (at least 10 ms), well inside the
bound; a client-side socket timeout that ends such a read early (a `watch_client` configured with
one) counts as an empty slice up to `WATCH_READ_MISSES` times in a row (re-reading from the last
id seen loses nothing). With a `watch_client`, it blocks in slices of `watch_block_s`: fewer
round trips per idle watcher. Each watcher holds one pooled connection while it blocks.

Failure modes: `StoreUnavailableError` when Redis cannot answer within `timeout_s`, `StoreError`
for other Redis errors (see `smart_dispatch._redis_guard`). A timed-out `append` may have been
applied; repeating it with the same idempotency key is safe.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.utils import str_if_bytes

from smart_dispatch._redis_guard import LuaRunner, LuaScript, checked_prefix, guarded
from smart_dispatch.errors import StoreUnavailableError
from smart_dispatch.inbox.base import (
    MAX_ITEMS,
    InboxItem,
    InboxStore,
    check_inbox_id,
    check_limit,
    parse_item_id,
)

# Append an item unless its idempotency key was seen (contract in the file's header).
APPEND_ONCE = LuaScript.load("smart_dispatch.inbox", "append_once.lua")
WATCH_BATCH = 100
WATCH_READ_MISSES = 3
REDIS_TICK_MARGIN_S = 0.15  # how much later than asked Redis may end a BLOCK (server tick)


class RedisInboxStore(InboxStore):
    """`InboxStore` over `redis.asyncio` (one server or a Cluster; the clients are passed in, and
    closing them is up to whoever made them: `close` leaves them open)."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "sd",
        timeout_s: float = 0.25,
        max_items: int = MAX_ITEMS,
        idempotency_ttl_s: float = 86400.0,
        watch_client: Redis | RedisCluster | None = None,
        watch_block_s: float = 5.0,
    ) -> None:
        self._client = client
        self._prefix = checked_prefix(prefix)
        self._timeout_s = timeout_s
        self._max_items = max_items
        self._idempotency_ttl_ms = max(1, int(idempotency_ttl_s * 1000))
        self._watch_client = watch_client or client
        self._watch_block_s = (
            watch_block_s
            if watch_client is not None
            else max(0.01, min(timeout_s / 2, timeout_s - REDIS_TICK_MARGIN_S))
        )
        self._lua = LuaRunner.of(client, timeout_s)

    @property
    def client(self) -> Redis | RedisCluster:
        return self._client

    def items_key(self, inbox_id: str) -> str:
        return f"{self._prefix}:{{inbox:{inbox_id}}}:items"

    def marker_key(self, inbox_id: str, idempotency_key: str) -> str:
        return f"{self._prefix}:{{inbox:{inbox_id}}}:key:{idempotency_key}"

    async def append(self, inbox_id: str, item: InboxItem, *, idempotency_key: str = "") -> str:
        check_inbox_id(inbox_id)
        fields = _encode(item)
        async with guarded(self._timeout_s):
            if not idempotency_key:
                new_id = await self._client.xadd(
                    self.items_key(inbox_id),
                    fields,  # type: ignore[arg-type]
                    maxlen=self._max_items,
                    approximate=True,
                )
                return str(str_if_bytes(new_id))
            keys = [self.items_key(inbox_id), self.marker_key(inbox_id, idempotency_key)]
            args: list[str | int] = [self._max_items, self._idempotency_ttl_ms]
            for name, value in fields.items():
                args += [name, value]
            return str(str_if_bytes(await self._lua.run(APPEND_ONCE, keys, args)))

    async def list(
        self, inbox_id: str, limit: int = 50, before_id: str | None = None
    ) -> builtins.list[InboxItem]:
        check_inbox_id(inbox_id)
        limit = check_limit(limit)
        newest = "+"
        if before_id:
            parse_item_id(before_id, "before_id")
            newest = f"({before_id}"
        async with guarded(self._timeout_s):
            entries: Any = await self._client.xrevrange(self.items_key(inbox_id), newest, "-", count=limit)
        return [_decode(entry_id, fields) for entry_id, fields in entries or ()]

    async def watch(self, inbox_id: str, *, after_id: str | None = None) -> AsyncIterator[InboxItem]:
        check_inbox_id(inbox_id)
        key = self.items_key(inbox_id)
        if after_id is not None:
            parse_item_id(after_id, "after_id")
            last = after_id
        else:
            async with guarded(self._timeout_s):
                newest: Any = await self._client.xrevrange(key, "+", "-", count=1)
            last = str(str_if_bytes(newest[0][0])) if newest else "0-0"
        block_ms = max(1, int(self._watch_block_s * 1000))
        misses = 0
        while True:
            try:
                async with guarded(self._timeout_s + self._watch_block_s):
                    reply = await self._watch_client.xread({key: last}, count=WATCH_BATCH, block=block_ms)
            except StoreUnavailableError as exc:
                if not isinstance(exc.__cause__, redis_errors.TimeoutError) or misses >= WATCH_READ_MISSES:
                    raise
                misses += 1  # the socket timed out before Redis ended the BLOCK: read again
                continue
            misses = 0
            items = [_decode(entry_id, fields) for entry_id, fields in _stream_entries(reply)]
            for item in items:  # yielded outside the guard: consumer time is not Redis time
                last = item.id
                yield item


def _encode(item: InboxItem) -> dict[str, str]:
    return {
        "dispatch_id": item.dispatch_id,
        "message_id": item.message_id,
        "text": item.text,
        "title": item.title,
        "data": json.dumps(dict(item.data), separators=(",", ":"), default=str),
        "created_at": item.created_at.astimezone(UTC).isoformat(),
    }


def _decode(entry_id: Any, raw: Mapping[Any, Any]) -> InboxItem:
    fields = {str(str_if_bytes(k)): str(str_if_bytes(v)) for k, v in raw.items()}
    return InboxItem(
        id=str(str_if_bytes(entry_id)),
        dispatch_id=fields.get("dispatch_id", ""),
        message_id=fields.get("message_id", ""),
        text=fields.get("text", ""),
        title=fields.get("title", ""),
        data=json.loads(fields.get("data") or "{}"),
        created_at=datetime.fromisoformat(fields["created_at"]) if "created_at" in fields else _EPOCH,
    )


def _stream_entries(reply: Any) -> Sequence[tuple[Any, Mapping[Any, Any]]]:
    """The entries of an XREAD reply: ``[[stream, [(id, fields), ...]], ...]``, empty on timeout."""
    return [entry for _stream, entries in reply or () for entry in entries]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
