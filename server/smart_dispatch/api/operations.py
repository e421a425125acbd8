"""What operators and people ask of a running sidecar, in one place: the gRPC servicers and the
web console on the admin port both call these, so an answer never differs between the two.

Each method takes and returns protobuf messages (the API's types; plain frozen values where the
API carries no message for the answer yet: queue depth, engagement), raises `SmartDispatchError`
subclasses for bad input or missing things (`InvalidRequestError` naming the field,
`NotFoundError`), and touches the store only through the runtime's components.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.api.convert import (
    LIST_KIND_OF,
    checked_time,
    decision_lookup,
    rules_status,
    stats_row,
    timestamp,
)
from smart_dispatch.api.dispatch_convert import dispatch_status
from smart_dispatch.api.preferences_convert import (
    get_response,
    preferences_from,
    preferences_message,
    update_response,
)
from smart_dispatch.behaviour.summary import EngagementSummary, summarize
from smart_dispatch.channels.receipts import Receipt
from smart_dispatch.counters.base import CapUsage
from smart_dispatch.decide.validate import check_id
from smart_dispatch.decisionlog.stats import checked_group_by, days_between, stats_rows
from smart_dispatch.errors import ConflictError, InvalidRequestError, NotFoundError, StoreError
from smart_dispatch.events import ReportedEvent
from smart_dispatch.preferences.centre import PreferenceCentre
from smart_dispatch.runtime import Runtime

MAX_REDRIVE_IDS = 1000


class Operations:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # -- messages ---------------------------------------------------------------------------

    async def decision(self, message_id: str) -> pb.GetDecisionResponse:
        """The latest decision for a message id, masked, with what happened to it later: from
        the decision log in the store (any sidecar's decisions), or the one this sidecar took a
        moment ago and has not written yet."""
        message_id = check_id(message_id, "message_id")
        recorder = self.runtime.recorder
        entry = None if recorder is None else recorder.pending(message_id)
        if entry is None:
            entry = await self.runtime.stores.decisions.get(message_id)
        if entry is None:
            where = "in the decision log" if recorder is not None else "(the decision log is off)"
            raise NotFoundError(f"no decision for message {message_id!r} {where}")
        record = await self.runtime.stores.dispatches.get_by_message(message_id)
        return decision_lookup(entry, record)

    async def dispatch(self, dispatch_id: str = "", message_id: str = "") -> pb.DispatchStatus:
        for field, value in (("dispatch_id", dispatch_id), ("message_id", message_id)):
            if value:
                check_id(value, field)
        return dispatch_status(await self.runtime.dispatcher.get(dispatch_id, message_id))

    async def report_event(self, event: ReportedEvent) -> bool:
        """Apply a reported event (`ReportEvent`, a delivery receipt): the person's behaviour and
        caps (events.py), an escalation it ends, the decision log's history. True when caps were
        refunded. Raises `InvalidRequestError`."""
        refunded = await self.runtime.events.report(event)
        await self.runtime.dispatcher.engaged(event)
        if self.runtime.recorder is not None:
            self.runtime.recorder.engaged(event)
        return refunded

    async def delivery_receipt(self, provider: str, receipt: Receipt) -> bool:
        """A provider's receipt (channels/receipts.py) as the DELIVERED or FAILED event of the
        message it sent under that id; False (nothing done) when no dispatch has that id."""
        dispatches = self.runtime.stores.dispatches
        record = await dispatches.get_by_provider_message(provider, receipt.provider_message_id)
        if record is None:
            return False
        sent = [a for a in record.attempts if a.provider_message_id == receipt.provider_message_id]
        step = record.current_step
        channel = sent[-1].channel if sent else step.channel if step else ""
        at = receipt.at or datetime.now(UTC)
        user, message = record.recipient.user_id, record.message.id
        event = ReportedEvent(user, "delivered" if receipt.delivered else "failed", at, message, channel)
        await self.report_event(event)
        return True

    async def dead_letters(self, limit: int = 100) -> list[pb.DispatchStatus]:
        """Dead letters, oldest first (at most `limit`)."""
        ids = await self.runtime.stores.dispatches.dead_letters(limit)
        out = []
        for dispatch_id in ids:
            record = await self.runtime.stores.dispatches.get(dispatch_id)
            if record is not None:
                out.append(dispatch_status(record))
        return out

    async def redrive(self, limit: int, dispatch_ids: tuple[str, ...] = ()) -> list[pb.DispatchStatus]:
        if limit < 0:
            raise InvalidRequestError("limit", "must not be negative")
        if len(dispatch_ids) > MAX_REDRIVE_IDS:
            raise InvalidRequestError("dispatch_ids", f"more than {MAX_REDRIVE_IDS} entries")
        ids = tuple(check_id(i, f"dispatch_ids[{n}]") for n, i in enumerate(dispatch_ids))
        redriven = await self.runtime.dispatcher.redrive(limit or 100, ids)
        return [dispatch_status(r) for r in redriven]

    # -- analytics --------------------------------------------------------------------------

    async def stats(self, request: pb.GetStatsRequest) -> pb.GetStatsResponse:
        """Counts per day x category x channel x rule x template over a range of UTC days,
        filtered and grouped as asked (this sidecar's unwritten counts flushed first)."""
        end = checked_time(request.end, "end") if request.HasField("end") else datetime.now(UTC)
        if request.HasField("start"):
            start = checked_time(request.start, "start")
        else:
            start = end - timedelta(days=6) if end.year > 1 else end
        days = days_between(start.date(), end.date())
        group_by = checked_group_by(request.group_by)
        filters = {
            "category": request.category,
            "channel": request.channel,
            "rule": request.rule,
            "template": request.template,
        }
        if self.runtime.recorder is not None:
            with contextlib.suppress(StoreError):  # what cannot be written now is read later
                await self.runtime.recorder.flush()
        counts = await self.runtime.stores.decisions.counts(days)
        return pb.GetStatsResponse(rows=[stats_row(row) for row in stats_rows(counts, group_by, filters)])

    # -- rules ------------------------------------------------------------------------------

    def rules_status(self) -> pb.RulesStatus:
        return rules_status(self.runtime.rules.status())

    # -- queues ---------------------------------------------------------------------------------

    async def queue_depth(self) -> dict[str, int]:
        """Work waiting: ready per lane, `scheduled` and `dead_letters` (`DispatchStore.depth`)."""
        return await self.runtime.stores.dispatches.depth()

    # -- one person -----------------------------------------------------------------------------

    async def list_memberships(self, user_id: str) -> pb.CheckListMemberResponse:
        """The allow and deny lists `user_id` is on."""
        names = await self.runtime.stores.lists.memberships(check_id(user_id, "user_id"))
        return pb.CheckListMemberResponse(lists=[LIST_KIND_OF[n] for n in sorted(names)])

    async def caps_in_use(self, user_id: str) -> list[pb.CapState]:
        """Every cap of the serving ruleset as it stands now for `user_id` (its own count for a
        user cap, the shared one for a global cap), in the rules' order. Records nothing."""
        user_id = check_id(user_id, "user_id")
        caps = tuple(self.runtime.rules.current().ruleset.caps.values())
        return [_cap_state(usage) for usage in await self.runtime.stores.counters.usage(user_id, caps)]

    async def engagement(self, user_id: str) -> EngagementSummary:
        """What the engagement model knows of `user_id`, decayed to now with the serving rules'
        half-life: per channel, per local hour, activity per UTC hour."""
        user_id = check_id(user_id, "user_id")
        behaviour = await self.runtime.stores.behaviour.get(user_id)
        half_life_s = self.runtime.rules.current().ruleset.learning.half_life_s
        return summarize(behaviour, time.time(), half_life_s)

    # -- preferences ----------------------------------------------------------------------------

    async def preferences(self, user_id: str) -> pb.GetPreferencesResponse:
        """A person's stored preferences (empty ones, no `updated_at`, when none are stored)."""
        return get_response(await self._centre().get(user_id))

    async def update_preferences(self, request: pb.UpdatePreferencesRequest) -> pb.UpdatePreferencesResponse:
        """Replace the parts of a person's preferences named in `update_mask` (all when empty).
        Raises `InvalidRequestError` naming the field or the unknown mask path, and
        `RequiredCategoryError` (FAILED_PRECONDITION) for an opt-out of a required category."""
        user_id = check_id(request.user_id, "user_id")
        given = preferences_from(request.preferences)
        stored = await self._centre().update(user_id, given, list(request.update_mask.paths))
        return update_response(stored)

    async def unsubscribe(self, token: str) -> pb.Preferences:
        """The one-click unsubscribe of an e-mail link (`POST /unsubscribe?token=…`, no login):
        verify the token and store its opt-out; the person's preferences as stored. Raises
        `UnsubscribeTokenError` (an `InvalidRequestError` of `token`: malformed, bad_signature,
        expired), `RequiredCategoryError` (the rules made the category required since), and
        `ConflictError` when this sidecar has no unsubscribe secret."""
        return preferences_message(await self._centre().unsubscribe(token))

    def _centre(self) -> PreferenceCentre:
        centre = self.runtime.preferences
        if centre is None:
            raise ConflictError("this runtime has no preference centre")
        return centre


def _cap_state(usage: CapUsage) -> pb.CapState:
    state = pb.CapState(
        name=usage.cap.name, limit=usage.cap.limit, used=usage.used, remaining=usage.remaining
    )
    state.window.FromMilliseconds(round(usage.cap.window_s * 1000))
    if usage.reset_at_s is not None:
        state.reset_at.CopyFrom(timestamp(datetime.fromtimestamp(usage.reset_at_s, UTC)))
    return state
