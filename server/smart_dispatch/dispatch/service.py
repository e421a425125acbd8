"""Dispatch operations behind the RPCs: accept, look up, watch, cancel, re-drive, engagement."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from smart_dispatch.decide.pipeline import Decider
from smart_dispatch.dispatch.model import DispatchRecord, DispatchState
from smart_dispatch.dispatch.store import DispatchStore
from smart_dispatch.domain import DecideRequest, Decision, Message, Reason, Verdict
from smart_dispatch.errors import ConflictError, InvalidRequestError, NotFoundError
from smart_dispatch.events import EventRecorder, ReportedEvent
from smart_dispatch.rules.model import Digest

_CANCELLABLE = frozenset({DispatchState.QUEUED, DispatchState.SCHEDULED, DispatchState.WAITING_ENGAGEMENT})
_UPDATE_TRIES = 5
_DIGEST_TRIES = 20  # digests of one window (each full one opens the next), conflicts included


class Dispatcher:
    def __init__(
        self,
        store: DispatchStore,
        decider: Decider,
        events: EventRecorder,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._decider = decider
        self._events = events
        self._clock = clock

    async def dispatch(self, request: DecideRequest) -> tuple[DispatchRecord, Decision | None, bool]:
        """Decide, persist and queue. Returns (record, decision, duplicate): a message id that was
        dispatched before returns the first dispatch (decision None, duplicate True)."""
        if request.message.id and (existing := await self._store.get_by_message(request.message.id)):
            return existing, None, True
        decision = await self._decider.decide(
            DecideRequest(request.message, request.recipient, bulk=request.bulk)
        )
        if decision.digest is not None:
            digest = decision.digest
            window = int(self._clock().timestamp() // digest.window_s)
            ends = datetime.fromtimestamp((window + 1) * digest.window_s, UTC)
            key = digest.key or request.message.category
            return await self._into_digest(request, decision, f"{key}:{window}", ends, digest)
        if decision.digest_until is not None:  # over a cap: one message when it has room again
            until = decision.digest_until
            over_cap = Digest(f"cap-{request.message.category}", 1.0, 1000, "all")
            return await self._into_digest(
                request, decision, f"{over_cap.key}:{int(until.timestamp())}", until, over_cap
            )
        now = self._clock()
        state = {
            Verdict.SEND: DispatchState.QUEUED,
            Verdict.DEFER: DispatchState.SCHEDULED,
            Verdict.SUPPRESS: DispatchState.SUPPRESSED,
        }[decision.verdict]
        detail = ", ".join(r.code for r in decision.reasons)
        record = DispatchRecord(
            dispatch_id=uuid.uuid4().hex,
            message=request.message,
            recipient=request.recipient,
            state=DispatchState.QUEUED,
            created_at=now,
            **_plan_of(decision),
        ).moved(state, now, f"accepted: {decision.verdict.value} ({detail})")
        stored, created = await self._store.create(record)
        return stored, (decision if created else None), not created

    async def _into_digest(
        self, request: DecideRequest, decision: Decision, name: str, ends: datetime, digest: Digest
    ) -> tuple[DispatchRecord, Decision | None, bool]:
        """Fold the message into its person's open digest `name` (`<key>:<window>`; over a cap
        `cap-<category>:<instant>`): ONE dispatch (message id `digest:<user>:<name>:<n>`) sent at
        `ends`, or at once when it holds `max_items` (keep all), the next message then opening
        digest n + 1. The digest is decided again when it goes (deny list, quiet hours, its caps:
        it counts once), so the message's own cap reservation is given back here. Returns the
        digest's record; a message already in the digest is a duplicate."""
        message, user = request.message, request.recipient.user_id
        now = self._clock()
        item = {**dict(message.data), "message_id": message.id, "at": now.isoformat()}
        key = name.split(":", 1)[0]
        note = Reason("digested", "", f"into the {key} digest going at {ends.isoformat()}")
        decided = replace(decision, reasons=(*decision.reasons, note))
        await self._events.refund(user, message.id)
        for n in range(_DIGEST_TRIES):
            digest_id = f"digest:{user}:{name}:{n}"
            current = await self._store.get_by_message(digest_id)
            if current is None:
                stored, created = await self._store.create(
                    self._new_digest(request, decision, digest_id, item, ends)
                )
                if not created:
                    continue  # opened meanwhile: read it again
                if digest.max_items == 1 and digest.keep == "all":
                    queued = stored.moved(DispatchState.QUEUED, now, "digest full")
                    stored = await self._store.update(queued, stored.version, run_at=now) or stored
                return stored, decided, False
            if any(i.get("message_id") == message.id for i in current.message.data.get("items", ())):
                return current, None, True
            if current.state is not DispatchState.SCHEDULED:
                continue  # sent, cancelled or full: the next digest of this window
            folded = _folded(current, item, digest)
            full = folded.message.data["count"] >= digest.max_items and digest.keep == "all"
            changed = folded.moved(DispatchState.QUEUED, now, "digest full") if full else folded
            stored_or_none = await self._store.update(changed, current.version, run_at=now if full else ends)
            if stored_or_none is not None:
                return stored_or_none, decided, False
        raise ConflictError(f"the {key} digest of {user} kept changing; try again")

    def _new_digest(
        self, request: DecideRequest, decision: Decision, digest_id: str, item: dict[str, Any], ends: datetime
    ) -> DispatchRecord:
        message = request.message
        data = {"items": [item], "count": 1, "text": f"1 new {message.category} message"}
        now = self._clock()
        record = DispatchRecord(
            dispatch_id=uuid.uuid4().hex,
            message=Message(digest_id, message.category, dict(message.labels), message.template, data),
            recipient=request.recipient,
            state=DispatchState.SCHEDULED,
            created_at=now,
            **(_plan_of(decision) | {"send_at": ends, "redecide": True}),
        )
        return record.moved(DispatchState.SCHEDULED, now, f"digest opened; goes at {ends.isoformat()}")

    async def get(self, dispatch_id: str = "", message_id: str = "") -> DispatchRecord:
        if dispatch_id:
            record = await self._store.get(dispatch_id)
        elif message_id:
            record = await self._store.get_by_message(message_id)
        else:
            raise InvalidRequestError("dispatch_id", "dispatch_id or message_id is required")
        if record is None:
            raise NotFoundError(f"no dispatch {dispatch_id or 'for message ' + repr(message_id)}")
        return record

    async def watch(self, dispatch_id: str) -> AsyncIterator[DispatchRecord]:
        """The current record, then every change, until a terminal state."""
        async with self._store.watch(dispatch_id) as changes:
            current = await self.get(dispatch_id)
            yield current
            if current.state.terminal:
                return
            async for record in changes:
                if record.version <= current.version:
                    continue
                current = record
                yield record
                if record.state.terminal:
                    return

    async def cancel(self, dispatch_id: str) -> DispatchRecord:
        """Cancel a queued, scheduled or escalating dispatch; it will not go out (further)."""
        for _ in range(_UPDATE_TRIES):
            record = await self.get(dispatch_id)
            if record.state is DispatchState.CANCELLED:
                return record
            if record.state not in _CANCELLABLE:
                raise ConflictError(f"dispatch {dispatch_id} is {record.state.value}; it cannot be cancelled")
            cancelled = record.moved(DispatchState.CANCELLED, self._clock(), "cancelled by request")
            stored = await self._store.update(cancelled, record.version, unschedule=True)
            if stored is not None:
                if not any(a.outcome == "delivered" for a in record.attempts):
                    await self._events.refund(record.recipient.user_id, record.message.id)
                return stored
        raise ConflictError(f"dispatch {dispatch_id} kept changing; try again")

    async def redrive(self, limit: int, dispatch_ids: tuple[str, ...] = ()) -> list[DispatchRecord]:
        """Decide dead letters again through the CURRENT rules and queue them."""
        ids = list(dispatch_ids) or await self._store.dead_letters(limit)
        redriven = []
        for dispatch_id in ids[:limit] if limit > 0 else ids:
            record = await self.get(dispatch_id)
            if not record.dead_lettered or record.state is not DispatchState.FAILED:
                raise ConflictError(f"dispatch {dispatch_id} is not a dead letter")
            decision = await self._decider.decide(DecideRequest(record.message, record.recipient))
            now = self._clock()
            if decision.verdict is Verdict.SUPPRESS:
                state, run_at = DispatchState.SUPPRESSED, None
            else:
                state = DispatchState.QUEUED if decision.verdict is Verdict.SEND else DispatchState.SCHEDULED
                run_at = decision.send_at or now
            again = record.moved(
                state,
                now,
                f"re-driven: {decision.verdict.value} under rules {decision.ruleset_version}",
                step_index=0,
                dead_lettered=False,
                **_plan_of(decision),
            )
            # leaves the dead-letter index in the same step (`dead_lettered=False`)
            stored = await self._store.update(again, record.version, run_at=run_at)
            if stored is None:
                raise ConflictError(f"dispatch {dispatch_id} changed while re-driving; try again")
            redriven.append(stored)
        return redriven

    async def engaged(self, event: ReportedEvent) -> None:
        """An open or click ends an escalation: the dispatch is delivered, no further step."""
        if event.kind not in ("opened", "clicked") or not event.message_id:
            return
        for _ in range(_UPDATE_TRIES):
            record = await self._store.get_by_message(event.message_id)
            if record is None or record.state is not DispatchState.WAITING_ENGAGEMENT:
                return
            done = record.moved(
                DispatchState.DELIVERED, self._clock(), f"{event.kind} on {event.channel}: escalation stopped"
            )
            if await self._store.update(done, record.version, unschedule=True) is not None:
                return


def _folded(record: DispatchRecord, item: dict[str, Any], digest: Digest) -> DispatchRecord:
    """The digest with `item` added: every item counted; carried as `keep` says, at most
    `max_items` of them."""
    data = dict(record.message.data)
    items = [*data.get("items", ()), item]
    if len(items) > digest.max_items:
        items = items[-digest.max_items :] if digest.keep == "last" else items[: digest.max_items]
    count = int(data.get("count", 0)) + 1
    data.update(items=items, count=count, text=f"{count} new {record.message.category} messages")
    return replace(record, message=replace(record.message, data=data))


def _plan_of(decision: Decision) -> dict[str, Any]:
    """The record fields a decision sets."""
    return {
        "steps": decision.steps,
        "send_at": decision.send_at,
        "decision_id": decision.decision_id,
        "ruleset_version": decision.ruleset_version,
        "reasons": decision.reasons,
        "escalate_after_s": decision.escalate_after_s,
        "redecide": decision.verdict is Verdict.DEFER,
        "lane": decision.lane,
        "traceparent": decision.traceparent,
    }
