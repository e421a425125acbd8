"""The embedded inbox store: inboxes in this process, lost on restart.

Watchers of an inbox wait on that inbox's `asyncio.Condition`; an append wakes only them.
Idempotency keys are remembered as long as their item is kept.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from functools import partial

from smart_dispatch.inbox.base import (
    MAX_ITEMS,
    InboxItem,
    InboxStore,
    check_inbox_id,
    check_limit,
    parse_item_id,
)


@dataclass(slots=True)
class _Inbox:
    items: deque[InboxItem] = field(default_factory=deque)  # oldest first
    id_of_key: dict[str, str] = field(default_factory=dict)
    key_of_id: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class MemoryInboxStore(InboxStore):
    """`InboxStore` in memory. `clock` (unix seconds) stamps item ids; `max_items` per inbox."""

    def __init__(self, *, max_items: int = MAX_ITEMS, clock: Callable[[], float] = time.time) -> None:
        self._inboxes: dict[str, _Inbox] = {}
        self._max_items = max_items
        self._clock = clock
        self._last_id = (0, 0)

    def _inbox(self, inbox_id: str) -> _Inbox:
        check_inbox_id(inbox_id)
        inbox = self._inboxes.get(inbox_id)
        if inbox is None:
            inbox = self._inboxes[inbox_id] = _Inbox()
        return inbox

    def _next_id(self) -> str:
        # Like Redis: milliseconds, with a sequence when the clock has not moved (or went back).
        ms = int(self._clock() * 1000)
        last_ms, last_seq = self._last_id
        self._last_id = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return "{}-{}".format(*self._last_id)

    async def append(self, inbox_id: str, item: InboxItem, *, idempotency_key: str = "") -> str:
        inbox = self._inbox(inbox_id)
        if idempotency_key and idempotency_key in inbox.id_of_key:
            return inbox.id_of_key[idempotency_key]
        stored = replace(item, id=self._next_id())
        inbox.items.append(stored)
        if idempotency_key:
            inbox.id_of_key[idempotency_key] = stored.id
            inbox.key_of_id[stored.id] = idempotency_key
        while len(inbox.items) > self._max_items:
            dropped = inbox.items.popleft()
            inbox.id_of_key.pop(inbox.key_of_id.pop(dropped.id, ""), None)
        async with inbox.changed:
            inbox.changed.notify_all()
        return stored.id

    async def list(
        self, inbox_id: str, limit: int = 50, before_id: str | None = None
    ) -> builtins.list[InboxItem]:
        limit = check_limit(limit)
        before = parse_item_id(before_id, "before_id") if before_id else None
        check_inbox_id(inbox_id)
        inbox = self._inboxes.get(inbox_id)  # reading an unknown inbox must not create it
        page: builtins.list[InboxItem] = []
        for item in reversed(inbox.items) if inbox else ():
            if before is not None and parse_item_id(item.id, "id") >= before:
                continue
            page.append(item)
            if len(page) == limit:
                break
        return page

    async def watch(self, inbox_id: str, *, after_id: str | None = None) -> AsyncIterator[InboxItem]:
        inbox = self._inbox(inbox_id)
        if after_id is not None:
            last = parse_item_id(after_id, "after_id")
        else:
            last = parse_item_id(inbox.items[-1].id, "id") if inbox.items else (0, 0)
        while True:
            async with inbox.changed:
                await inbox.changed.wait_for(partial(_has_newer, inbox, last))
                fresh = _newer(inbox, last)
            for item in fresh:  # yielded outside the lock: a slow consumer blocks no append
                last = parse_item_id(item.id, "id")
                yield item


def _has_newer(inbox: _Inbox, last: tuple[int, int]) -> bool:
    return bool(inbox.items) and parse_item_id(inbox.items[-1].id, "id") > last


def _newer(inbox: _Inbox, last: tuple[int, int]) -> builtins.list[InboxItem]:
    """The items after `last`, oldest first (walks back from the newest end only)."""
    fresh: builtins.list[InboxItem] = []
    for item in reversed(inbox.items):
        if parse_item_id(item.id, "id") <= last:
            break
        fresh.append(item)
    fresh.reverse()
    return fresh
