"""`smartdispatch.v1.RulesAdminService`: reload and inspect the serving rules."""

from __future__ import annotations

from typing import Any

import grpc

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.api.convert import rules_status
from smart_dispatch.api.status import grpc_errors
from smart_dispatch.rules.active import ActiveRules

Context = grpc.aio.ServicerContext[Any, Any]


class RulesAdminServicer(pb_grpc.RulesAdminServiceServicer):
    def __init__(self, rules: ActiveRules) -> None:
        self._rules = rules

    @grpc_errors
    async def ReloadRules(self, request: pb.ReloadRulesRequest, context: Context) -> pb.ReloadRulesResponse:
        changed = await self._rules.load_async()
        return pb.ReloadRulesResponse(changed=changed, status=rules_status(self._rules.status()))

    @grpc_errors
    async def GetRulesStatus(
        self, request: pb.GetRulesStatusRequest, context: Context
    ) -> pb.GetRulesStatusResponse:
        return pb.GetRulesStatusResponse(status=rules_status(self._rules.status()))
