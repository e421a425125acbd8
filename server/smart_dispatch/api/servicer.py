"""`smartdispatch.v1.SmartDispatchService` over the decision pipeline and the list store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.api.convert import (
    LIST_KIND_OF,
    LIST_KINDS,
    decide_request,
    decide_response,
    decision_lookup,
    reported_event,
)
from smart_dispatch.api.dispatch_convert import dispatch_status, inbox_item
from smart_dispatch.api.status import grpc_errors, stream_errors
from smart_dispatch.decide.pipeline import Decider
from smart_dispatch.decide.validate import check_id
from smart_dispatch.dispatch.service import Dispatcher
from smart_dispatch.errors import InvalidRequestError, NotFoundError
from smart_dispatch.events import EventRecorder
from smart_dispatch.inbox.base import InboxStore
from smart_dispatch.lists.base import ListName, ListStore
from smart_dispatch.telemetry import Telemetry

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
_MAX_REDRIVE_IDS = 1000


class SmartDispatchServicer(pb_grpc.SmartDispatchServiceServicer):
    def __init__(
        self,
        decider: Decider,
        lists: ListStore,
        events: EventRecorder,
        dispatcher: Dispatcher,
        inbox: InboxStore,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._decider = decider
        self._lists = lists
        self._events = events
        self._dispatcher = dispatcher
        self._inbox = inbox
        self._telemetry = telemetry or Telemetry.noop()

    @grpc_errors
    async def Decide(self, request: pb.DecideRequest, context: Context) -> pb.DecideResponse:
        with self._telemetry.caller_trace(context.invocation_metadata):
            decision = await self._decider.decide(decide_request(request))
        return decide_response(decision)

    @grpc_errors
    async def Dispatch(self, request: pb.DispatchRequest, context: Context) -> pb.DispatchResponse:
        decide = decide_request(pb.DecideRequest(message=request.message, recipient=request.recipient))
        with self._telemetry.caller_trace(context.invocation_metadata):
            record, decision, duplicate = await self._dispatcher.dispatch(decide)
        response = pb.DispatchResponse(
            dispatch_id=record.dispatch_id, duplicate=duplicate, status=dispatch_status(record)
        )
        if decision is not None:
            response.decision.CopyFrom(decide_response(decision))
        return response

    @grpc_errors
    async def GetDispatch(self, request: pb.GetDispatchRequest, context: Context) -> pb.GetDispatchResponse:
        for field in ("dispatch_id", "message_id"):
            if getattr(request, field):
                check_id(getattr(request, field), field)
        record = await self._dispatcher.get(request.dispatch_id, request.message_id)
        return pb.GetDispatchResponse(status=dispatch_status(record))

    async def WatchDispatch(
        self, request: pb.WatchDispatchRequest, context: Context
    ) -> AsyncIterator[pb.WatchDispatchResponse]:
        watch = _checked(lambda: self._dispatcher.watch(_required(request.dispatch_id, "dispatch_id")))
        async for record in stream_errors(watch, context):
            yield pb.WatchDispatchResponse(status=dispatch_status(record))

    @grpc_errors
    async def CancelDispatch(
        self, request: pb.CancelDispatchRequest, context: Context
    ) -> pb.CancelDispatchResponse:
        record = await self._dispatcher.cancel(_required(request.dispatch_id, "dispatch_id"))
        return pb.CancelDispatchResponse(status=dispatch_status(record))

    @grpc_errors
    async def RedriveDeadLetters(
        self, request: pb.RedriveDeadLettersRequest, context: Context
    ) -> pb.RedriveDeadLettersResponse:
        if request.limit < 0:
            raise InvalidRequestError("limit", "must not be negative")
        if len(request.dispatch_ids) > _MAX_REDRIVE_IDS:
            raise InvalidRequestError("dispatch_ids", f"more than {_MAX_REDRIVE_IDS} entries")
        ids = tuple(check_id(i, f"dispatch_ids[{n}]") for n, i in enumerate(request.dispatch_ids))
        redriven = await self._dispatcher.redrive(request.limit or 100, ids)
        return pb.RedriveDeadLettersResponse(redriven=[dispatch_status(r) for r in redriven])

    @grpc_errors
    async def ListInbox(self, request: pb.ListInboxRequest, context: Context) -> pb.ListInboxResponse:
        items = await self._inbox.list(_required(request.inbox_id, "inbox_id"), request.limit or 50)
        return pb.ListInboxResponse(items=[inbox_item(item) for item in items])

    async def StreamInbox(
        self, request: pb.StreamInboxRequest, context: Context
    ) -> AsyncIterator[pb.StreamInboxResponse]:
        watch = _checked(lambda: self._inbox.watch(_required(request.inbox_id, "inbox_id")))
        async for item in stream_errors(watch, context):
            yield pb.StreamInboxResponse(item=inbox_item(item))

    @grpc_errors
    async def ReportEvent(self, request: pb.ReportEventRequest, context: Context) -> pb.ReportEventResponse:
        event = reported_event(request)
        refunded = await self._events.report(event)
        await self._dispatcher.engaged(event)
        return pb.ReportEventResponse(refunded=refunded)

    @grpc_errors
    async def AddListMember(
        self, request: pb.AddListMemberRequest, context: Context
    ) -> pb.AddListMemberResponse:
        added = await self._lists.add(_list_name(request.list), _user_id(request.user_id))
        return pb.AddListMemberResponse(added=added)

    @grpc_errors
    async def RemoveListMember(
        self, request: pb.RemoveListMemberRequest, context: Context
    ) -> pb.RemoveListMemberResponse:
        removed = await self._lists.remove(_list_name(request.list), _user_id(request.user_id))
        return pb.RemoveListMemberResponse(removed=removed)

    @grpc_errors
    async def CheckListMember(
        self, request: pb.CheckListMemberRequest, context: Context
    ) -> pb.CheckListMemberResponse:
        names = await self._lists.memberships(_user_id(request.user_id))
        return pb.CheckListMemberResponse(lists=[LIST_KIND_OF[n] for n in sorted(names)])

    @grpc_errors
    async def GetDecision(self, request: pb.GetDecisionRequest, context: Context) -> pb.GetDecisionResponse:
        message_id = _required(request.message_id, "message_id")
        entry = self._telemetry.audit.lookup(message_id)
        if entry is None:
            raise NotFoundError(f"no decision for message {message_id!r} is known to this sidecar")
        return decision_lookup(entry)


async def _checked(start: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
    """The items of `start()`, whose argument checks then raise inside the stream (where
    `stream_errors` maps them to a status) rather than before it."""
    async for item in start():
        yield item


def _list_name(kind: pb.ListKind.ValueType) -> ListName:
    name = LIST_KINDS.get(kind)
    if name is None:
        raise InvalidRequestError("list", "must be LIST_KIND_ALLOW or LIST_KIND_DENY")
    return "allow" if name == "allow" else "deny"


def _user_id(user_id: str) -> str:
    return _required(user_id, "user_id")


def _required(value: str, field: str) -> str:
    return check_id(value, field)
