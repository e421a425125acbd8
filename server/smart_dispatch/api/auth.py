"""Bearer-token authentication and scope checks for every RPC but health and reflection.

A call without `authorization: Bearer <token>` metadata, or with an unknown token, is refused
with UNAUTHENTICATED; a known token without the method's scope with PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from smart_dispatch.security import GRANTED_BY, TokenTable

_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_SERVICE = "/smartdispatch.v1.SmartDispatchService/"
_ADMIN_METHODS = frozenset(
    {
        "/smartdispatch.v1.RulesAdminService/ReloadRules",
        _SERVICE + "AddListMember",
        _SERVICE + "RemoveListMember",
        _SERVICE + "RedriveDeadLetters",
    }
)
_READ_METHODS = frozenset(
    {
        "/smartdispatch.v1.RulesAdminService/GetRulesStatus",
        _SERVICE + "GetDecision",
        _SERVICE + "GetStats",
        _SERVICE + "GetDispatch",
        _SERVICE + "WatchDispatch",
        _SERVICE + "ListInbox",
        _SERVICE + "StreamInbox",
        _SERVICE + "CheckListMember",
        _SERVICE + "GetPreferences",  # UpdatePreferences: decide, like events
    }
)


def required_scope(method: str) -> str | None:
    """The scope a method needs; None for open methods (health, reflection)."""
    if method.startswith(_OPEN_PREFIXES):
        return None
    if method in _ADMIN_METHODS:
        return "admin"
    return "read" if method in _READ_METHODS else "decide"


if TYPE_CHECKING:  # grpc's classes are generic in the stubs only
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.aio.ServerInterceptor


class BearerAuthInterceptor(_Interceptor):
    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        scope = required_scope(details.method)
        if scope is None:
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        header = str(metadata.get("authorization", ""))
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, "missing `authorization: Bearer …` metadata")
        caller = self._tokens.caller(token.strip())
        if caller is None:
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")
        if not caller.scopes & GRANTED_BY[scope]:
            problem = f"{caller.name!r} lacks the {scope!r} scope for {details.method}"
            return _refusal(grpc.StatusCode.PERMISSION_DENIED, problem)
        return await continuation(details)


def _refusal(code: grpc.StatusCode, message: str) -> Handler:
    """A handler that aborts before reading or sending anything, so it serves unary and
    server-streaming methods alike (every guarded method takes one request)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)
