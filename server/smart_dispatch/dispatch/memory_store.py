"""The embedded dispatch store (`memory://`): an in-process queue and schedule.

NOT durable: accepted dispatches that are not delivered yet are lost when the process stops
(`serve` says so at start). Same contract as the Redis store otherwise, retention included: a
record is forgotten `retention_s` after it reached a final state (its message id may then be
dispatched again), a dead letter only once re-driven and finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime

from smart_dispatch.dispatch.lanes import LaneOrder
from smart_dispatch.dispatch.model import DispatchRecord
from smart_dispatch.dispatch.store import PROVIDER_MESSAGE_TTL_S, Claim, DispatchStore, Watch
from smart_dispatch.domain import LANES


class MemoryDispatchStore(DispatchStore):
    durable = False

    def __init__(self, claim_timeout_s: float = 30.0, retention_s: float = 7 * 86400) -> None:
        self._records: dict[str, DispatchRecord] = {}
        self._by_message: dict[str, str] = {}
        self._ready: dict[str, deque[tuple[str, int]]] = {lane: deque() for lane in LANES}
        self._order = LaneOrder()
        self._scheduled: list[tuple[float, int, str, int]] = []
        self._pending: dict[str, tuple[Claim, float]] = {}
        self._dead: dict[str, float] = {}
        self._watchers: dict[str, list[asyncio.Queue[DispatchRecord]]] = {}
        # Idle claimers, each waiting on its own future: new work wakes one of them, not all.
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._seq = itertools.count()
        self._claim_timeout_s = claim_timeout_s
        self._retention_s = retention_s
        # (forget at, dispatch id, version that was final): in time order, as retention is fixed
        self._expiry: deque[tuple[float, str, int]] = deque()
        # (provider, its message id) -> dispatch id, and its expiry in time order (a fixed TTL)
        self._provider_ids: dict[tuple[str, str], str] = {}
        self._provider_expiry: deque[tuple[float, tuple[str, str]]] = deque()

    async def create(self, record: DispatchRecord) -> tuple[DispatchRecord, bool]:
        self._forget_expired()
        existing = self._by_message.get(record.message.id)
        if existing is not None:
            return self._records[existing], False
        stored = replace(record, version=1)
        self._records[stored.dispatch_id] = stored
        self._by_message[stored.message.id] = stored.dispatch_id
        self._queue(stored, stored.send_at)
        return stored, True

    async def get(self, dispatch_id: str) -> DispatchRecord | None:
        return self._records.get(dispatch_id)

    async def remember_provider_message(
        self, provider: str, provider_message_id: str, dispatch_id: str
    ) -> None:
        self._forget_provider_ids()
        key = (provider, provider_message_id)
        self._provider_ids[key] = dispatch_id
        self._provider_expiry.append((time.monotonic() + PROVIDER_MESSAGE_TTL_S, key))

    async def get_by_provider_message(self, provider: str, provider_message_id: str) -> DispatchRecord | None:
        self._forget_provider_ids()
        dispatch_id = self._provider_ids.get((provider, provider_message_id))
        return None if dispatch_id is None else self._records.get(dispatch_id)

    def _forget_provider_ids(self) -> None:
        now = time.monotonic()
        while self._provider_expiry and self._provider_expiry[0][0] <= now:
            _, key = self._provider_expiry.popleft()
            self._provider_ids.pop(key, None)

    async def get_by_message(self, message_id: str) -> DispatchRecord | None:
        dispatch_id = self._by_message.get(message_id)
        return None if dispatch_id is None else self._records[dispatch_id]

    async def update(
        self,
        record: DispatchRecord,
        expected_version: int,
        *,
        run_at: datetime | None = None,
        unschedule: bool = False,
        ack: Claim | None = None,
    ) -> DispatchRecord | None:
        if ack is not None:
            self._pending.pop(ack.receipt, None)  # no await before the update: one atomic step
        current = self._records.get(record.dispatch_id)
        if current is None or current.version != expected_version:
            return None
        stored = replace(record, version=expected_version + 1)
        self._records[stored.dispatch_id] = stored
        if stored.dead_lettered:
            self._dead.setdefault(stored.dispatch_id, time.time())
        else:
            self._dead.pop(stored.dispatch_id, None)
            if stored.state.terminal:
                self._expiry.append((time.time() + self._retention_s, stored.dispatch_id, stored.version))
        if run_at is not None:
            self._queue(stored, run_at)
        for queue in self._watchers.get(stored.dispatch_id, ()):
            queue.put_nowait(stored)
        return stored

    def _forget_expired(self) -> None:
        """Drop records whose retention after their final state has passed (and that did not
        change since)."""
        now = time.time()
        while self._expiry and self._expiry[0][0] <= now:
            _, dispatch_id, version = self._expiry.popleft()
            record = self._records.get(dispatch_id)
            if record is None or record.version != version:
                continue
            del self._records[dispatch_id]
            if self._by_message.get(record.message.id) == dispatch_id:
                del self._by_message[record.message.id]

    def _queue(self, record: DispatchRecord, run_at: datetime | None) -> None:
        now = time.time()
        when = now if run_at is None else run_at.timestamp()
        if when <= now:
            self._ready[record.lane].append((record.dispatch_id, record.version))
        else:
            entry = (when, next(self._seq), record.dispatch_id, record.version)
            heapq.heappush(self._scheduled, entry)
            if self._scheduled[0] is not entry:
                return  # idle claimers already wake up for an earlier entry
        self._wake_one()  # to take it, or to wait until the new earliest entry is due

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def claim(self, consumer: str, count: int, wait_s: float) -> list[Claim]:
        deadline = time.monotonic() + wait_s
        while True:
            self._promote()
            if any(self._ready.values()):
                claims: list[Claim] = []
                expires = time.monotonic() + self._claim_timeout_s
                while len(claims) < count:
                    busy = [lane for lane, queue in self._ready.items() if queue]
                    if not busy:
                        break
                    lane = self._order.next(busy)[0]
                    dispatch_id, token = self._ready[lane].popleft()
                    record = self._records.get(dispatch_id)
                    claim = Claim(dispatch_id, token, f"{consumer}:{next(self._seq)}", record, lane)
                    self._pending[claim.receipt] = (claim, expires)
                    claims.append(claim)
                if any(self._ready.values()):
                    self._wake_one()  # more work than this claimer takes: pass it on
                return claims
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            next_due = self._scheduled[0][0] - time.time() if self._scheduled else remaining
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(max(0.001, min(remaining, next_due))):
                    await waiter
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and any(self._ready.values()):
                    self._wake_one()  # woken, then cancelled before taking the work: pass it on
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(ValueError):  # already dropped by _wake_one
                        self._waiters.remove(waiter)

    def _promote(self) -> None:
        now = time.time()
        while self._scheduled and self._scheduled[0][0] <= now:
            _, _, dispatch_id, token = heapq.heappop(self._scheduled)
            record = self._records.get(dispatch_id)
            self._ready[record.lane if record is not None else "normal"].append((dispatch_id, token))
        if self._pending:
            clock = time.monotonic()
            expired = [r for r, (_, deadline) in self._pending.items() if deadline <= clock]
            for receipt in expired:
                claim, _ = self._pending.pop(receipt)
                self._ready[claim.lane].append((claim.dispatch_id, claim.token))

    async def ack(self, claim: Claim) -> None:
        self._pending.pop(claim.receipt, None)

    def watch(self, dispatch_id: str) -> Watch:
        return _MemoryWatch(self._watchers, dispatch_id)

    async def dead_letters(self, limit: int) -> list[str]:
        return [i for i, _ in sorted(self._dead.items(), key=lambda item: item[1])][:limit]

    async def depth(self) -> dict[str, int]:
        return {
            **{lane: len(queue) for lane, queue in self._ready.items()},
            "scheduled": len(self._scheduled),
            "dead_letters": len(self._dead),
        }


class _MemoryWatch(Watch):
    def __init__(self, watchers: dict[str, list[asyncio.Queue[DispatchRecord]]], dispatch_id: str) -> None:
        self._watchers = watchers
        self._id = dispatch_id
        self._queue: asyncio.Queue[DispatchRecord] = asyncio.Queue()

    async def subscribe(self) -> None:
        self._watchers.setdefault(self._id, []).append(self._queue)

    async def changes(self) -> AsyncIterator[DispatchRecord]:
        while True:
            yield await self._queue.get()

    async def unsubscribe(self) -> None:
        queues = self._watchers.get(self._id, [])
        if self._queue in queues:
            queues.remove(self._queue)
        if not queues:
            self._watchers.pop(self._id, None)
