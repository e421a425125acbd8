"""`smartdispatch.v1.SmartDispatchService` over the decision pipeline and the list store."""

from __future__ import annotations

from typing import Any

import grpc

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.api.convert import (
    LIST_KIND_OF,
    LIST_KINDS,
    decide_request,
    decide_response,
    reported_event,
)
from smart_dispatch.api.status import grpc_errors
from smart_dispatch.decide.pipeline import Decider
from smart_dispatch.errors import InvalidRequestError
from smart_dispatch.events import EventRecorder
from smart_dispatch.lists.base import ListName, ListStore

Context = grpc.aio.ServicerContext[Any, Any]


class SmartDispatchServicer(pb_grpc.SmartDispatchServiceServicer):
    def __init__(self, decider: Decider, lists: ListStore, events: EventRecorder) -> None:
        self._decider = decider
        self._lists = lists
        self._events = events

    @grpc_errors
    async def Decide(self, request: pb.DecideRequest, context: Context) -> pb.DecideResponse:
        decision = await self._decider.decide(decide_request(request))
        return decide_response(decision)

    @grpc_errors
    async def ReportEvent(self, request: pb.ReportEventRequest, context: Context) -> pb.ReportEventResponse:
        refunded = await self._events.report(reported_event(request))
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


def _list_name(kind: pb.ListKind.ValueType) -> ListName:
    name = LIST_KINDS.get(kind)
    if name is None:
        raise InvalidRequestError("list", "must be LIST_KIND_ALLOW or LIST_KIND_DENY")
    return "allow" if name == "allow" else "deny"


def _user_id(user_id: str) -> str:
    if not user_id.strip():
        raise InvalidRequestError("user_id", "is required")
    return user_id
