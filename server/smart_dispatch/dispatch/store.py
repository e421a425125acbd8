"""Where dispatches live between `Dispatch` and delivery: the contract of every dispatch store.

- `create` persists a record (accepted = persisted) and queues it: due now -> the ready queue,
  later -> the schedule. A message id already dispatched returns the first record instead.
- Workers `claim` ready work, each claim carrying its record (a claimed item not acked within
  `claim_timeout_s` is handed to another worker: a crashed worker loses nothing), then `ack` it
  once its record is updated - or let the update that finishes the claim ack it in the same
  atomic step (`update(..., ack=claim)`).
- `update` stores a new version of a record only if nobody stored another one since
  (`expected_version`), optionally scheduling it again; every update is published to `watch`.
- The dead-letter index (`dead_letters`) follows `record.dead_lettered`: the update that stores a
  record indexes or unindexes it in the same atomic step, so a crash can never leave a dead
  letter that `RedriveDeadLetters` does not find.
- A provider's own message id (what its delivery receipts carry) is indexed to the dispatch by
  `remember_provider_message` when the provider accepted the message, and found again by
  `get_by_provider_message` (channels/receipts.py) for `PROVIDER_MESSAGE_TTL_S`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from smart_dispatch.dispatch.model import DispatchRecord

PROVIDER_MESSAGE_TTL_S = 7 * 86400
"""How long a provider message id leads to its dispatch: receipts come within 72 hours."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A unit of ready work: `token` is the record version it was queued for (stale tokens
    are skipped); `receipt` is the store's handle for `ack`.

    `record` saves the worker a read: the record as it was queued or, at the latest, claimed
    (None: there is no such record any more). It may be older than the stored one; the version
    check of the next `update` (expected version = `token`) notices that, so anything that check
    cannot undo needs a fresh `get` first. A claim taken over from another consumer carries the
    record as stored when it was taken over."""

    dispatch_id: str
    token: int
    receipt: str
    record: DispatchRecord | None = field(compare=False, repr=False)
    #: the lane it was queued in (where `ack` finds it)
    lane: str = "normal"


class Watch(abc.ABC):
    """A subscription to one record's changes; subscribed on `__aenter__`."""

    async def __aenter__(self) -> AsyncIterator[DispatchRecord]:
        await self.subscribe()
        return self.changes()

    async def __aexit__(self, *exc: object) -> None:
        await self.unsubscribe()

    @abc.abstractmethod
    async def subscribe(self) -> None: ...

    @abc.abstractmethod
    def changes(self) -> AsyncIterator[DispatchRecord]: ...

    @abc.abstractmethod
    async def unsubscribe(self) -> None: ...


class DispatchStore(abc.ABC):
    durable: bool = False

    @abc.abstractmethod
    async def create(self, record: DispatchRecord) -> tuple[DispatchRecord, bool]:
        """Persist and queue `record` (version 1); (existing record, False) when its message id
        was dispatched before."""

    @abc.abstractmethod
    async def get(self, dispatch_id: str) -> DispatchRecord | None: ...

    @abc.abstractmethod
    async def get_by_message(self, message_id: str) -> DispatchRecord | None: ...

    @abc.abstractmethod
    async def update(
        self,
        record: DispatchRecord,
        expected_version: int,
        *,
        run_at: datetime | None = None,
        unschedule: bool = False,
        ack: Claim | None = None,
    ) -> DispatchRecord | None:
        """Store `record` as version `expected_version + 1` if the stored version is still
        `expected_version`; queue it to run at `run_at` (now or later); `unschedule` drops a
        pending scheduled run. `ack`: the claim this update finishes, acked in the same atomic
        step whether or not the version matched (the caller is done with it either way; when the
        update fails with an error, the claim stays unacked). In the same step the record joins
        the dead-letter index when `record.dead_lettered` (keeping its place if already there)
        and leaves it otherwise. Returns the stored record, None when the version was stale
        (then neither the record nor the index changed)."""

    @abc.abstractmethod
    async def claim(self, consumer: str, count: int, wait_s: float) -> list[Claim]:
        """Up to `count` ready items, waiting up to `wait_s` for one, each with its record.
        Includes items another consumer claimed but did not ack within the claim timeout, and
        scheduled items that are due."""

    @abc.abstractmethod
    async def ack(self, claim: Claim) -> None: ...

    @abc.abstractmethod
    def watch(self, dispatch_id: str) -> Watch:
        """Subscribe to every version of the record stored from now on. Use as
        `async with store.watch(id) as changes: ... async for record in changes`."""

    @abc.abstractmethod
    async def dead_letters(self, limit: int) -> list[str]:
        """Dispatch ids of dead letters, oldest first (maintained by `update`)."""

    @abc.abstractmethod
    async def depth(self) -> dict[str, int]:
        """What is waiting, for operators (a read, no side effects): per lane of `domain.LANES`
        the items ready to be claimed and not handed to a worker yet, `scheduled` the items
        waiting for their time (also those due but not yet moved to their lane), and
        `dead_letters` the size of the dead-letter index. An item queued for a version of its
        record that a later update replaced still counts until a worker skips it, so the
        numbers may run a little above the dispatches actually waiting."""

    @abc.abstractmethod
    async def remember_provider_message(
        self, provider: str, provider_message_id: str, dispatch_id: str
    ) -> None:
        """Index `provider`'s message id to `dispatch_id` for `PROVIDER_MESSAGE_TTL_S`."""

    @abc.abstractmethod
    async def get_by_provider_message(self, provider: str, provider_message_id: str) -> DispatchRecord | None:
        """The dispatch `provider` gave that message id to (None: unknown, or forgotten)."""

    async def close(self) -> None:
        return None
