"""`smartdispatch.v1.SmartDispatchService` over the decision pipeline and the list store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import grpc

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.api.convert import (
    LIST_KINDS,
    decide_request,
    decide_response,
    reported_event,
)
from smart_dispatch.api.dispatch_convert import dispatch_status, inbox_item
from smart_dispatch.api.operations import Operations
from smart_dispatch.api.status import grpc_errors, status_for, stream_errors
from smart_dispatch.decide.validate import check_id
from smart_dispatch.errors import InvalidRequestError, SmartDispatchError
from smart_dispatch.lists.base import ListName

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")


class SmartDispatchServicer(pb_grpc.SmartDispatchServiceServicer):
    def __init__(self, operations: Operations) -> None:
        runtime = operations.runtime
        self._operations = operations
        self._decider = runtime.decider
        self._lists = runtime.stores.lists
        self._events = runtime.events
        self._dispatcher = runtime.dispatcher
        self._inbox = runtime.stores.inbox
        self._telemetry = runtime.telemetry

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
    async def DecideBatch(self, request: pb.DecideBatchRequest, context: Context) -> pb.DecideBatchResponse:
        _batch_size(len(request.requests))

        async def one(item: pb.DecideRequest) -> pb.DecideBatchResult:
            try:
                decision = await self._decider.decide(decide_request(item))
            except SmartDispatchError as exc:
                return pb.DecideBatchResult(error=_item_error(exc))
            return pb.DecideBatchResult(decision=decide_response(decision))

        with self._telemetry.caller_trace(context.invocation_metadata):
            results = await _in_order(one, request.requests)
        return pb.DecideBatchResponse(results=results)

    @grpc_errors
    async def DispatchBatch(
        self, request: pb.DispatchBatchRequest, context: Context
    ) -> pb.DispatchBatchResponse:
        _batch_size(len(request.requests))

        async def one(item: pb.DispatchRequest) -> pb.DispatchBatchResult:
            try:
                decide = decide_request(pb.DecideRequest(message=item.message, recipient=item.recipient))
                record, decision, duplicate = await self._dispatcher.dispatch(replace(decide, bulk=True))
            except SmartDispatchError as exc:
                return pb.DispatchBatchResult(error=_item_error(exc))
            response = pb.DispatchResponse(
                dispatch_id=record.dispatch_id, duplicate=duplicate, status=dispatch_status(record)
            )
            if decision is not None:
                response.decision.CopyFrom(decide_response(decision))
            return pb.DispatchBatchResult(dispatch=response)

        with self._telemetry.caller_trace(context.invocation_metadata):
            results = await _in_order(one, request.requests)
        return pb.DispatchBatchResponse(results=results)

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
        redriven = await self._operations.redrive(request.limit, tuple(request.dispatch_ids))
        return pb.RedriveDeadLettersResponse(redriven=redriven)

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
        refunded = await self._operations.report_event(reported_event(request))
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
        return await self._operations.list_memberships(_user_id(request.user_id))

    @grpc_errors
    async def GetDecision(self, request: pb.GetDecisionRequest, context: Context) -> pb.GetDecisionResponse:
        return await self._operations.decision(_required(request.message_id, "message_id"))

    @grpc_errors
    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        return await self._operations.stats(request)

    @grpc_errors
    async def GetPreferences(
        self, request: pb.GetPreferencesRequest, context: Context
    ) -> pb.GetPreferencesResponse:
        return await self._operations.preferences(_user_id(request.user_id))

    @grpc_errors
    async def UpdatePreferences(
        self, request: pb.UpdatePreferencesRequest, context: Context
    ) -> pb.UpdatePreferencesResponse:
        return await self._operations.update_preferences(request)


MAX_BATCH = 1000
#: batch items decided at once: their store round trips overlap, their CPU does not
_BATCH_CONCURRENCY = 32


def _batch_size(n: int) -> None:
    if n > MAX_BATCH:
        raise InvalidRequestError("requests", f"at most {MAX_BATCH} per call, got {n}")


def _item_error(exc: SmartDispatchError) -> pb.BatchItemError:
    return pb.BatchItemError(code=status_for(exc).name, message=str(exc))


async def _in_order(one: Callable[[Any], Awaitable[T]], items: Sequence[Any]) -> list[T]:
    """`one` of every item, `_BATCH_CONCURRENCY` at a time, results in the items' order."""
    gate = asyncio.Semaphore(_BATCH_CONCURRENCY)

    async def gated(item: Any) -> T:
        async with gate:
            return await one(item)

    return list(await asyncio.gather(*(gated(item) for item in items)))


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
