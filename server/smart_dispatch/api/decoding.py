"""Registering our services so that a request that cannot be decoded is INVALID_ARGUMENT.

gRPC's generated registration decodes with `Message.FromString`; when that raises (bytes that are
not protobuf, a string that is not UTF-8, messages nested past protobuf's recursion limit),
grpc.aio answers UNKNOWN and logs a traceback per call. Here the decoder never raises: it
returns an `Undecodable` that the method's handler answers with INVALID_ARGUMENT naming the
message type, so such calls are answered, logged briefly and counted like any other refusal.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


class Undecodable:
    """A request body that is not a valid `type_name`."""

    __slots__ = ("problem", "type_name")

    def __init__(self, type_name: str, problem: str) -> None:
        self.type_name = type_name
        self.problem = problem

    def message(self) -> str:
        return (
            f"the request is not a valid {self.type_name}: {self.problem[:200]} (check field types, that "
            "strings are UTF-8, and that Struct values nest no deeper than protobuf allows)"
        )


def add_service(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor) -> None:
    """Register every method of `service` implemented by `servicer` on `server`."""
    handlers = {method.name: _handler(getattr(servicer, method.name), method) for method in service.methods}
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]


def _handler(implementation: Callable[..., Any], method: MethodDescriptor) -> Any:
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    decode = _decoder(request_class)
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(implementation),
            request_deserializer=decode,
            response_serializer=response_class.SerializeToString,
        )
    return grpc.unary_unary_rpc_method_handler(
        _unary(implementation),
        request_deserializer=decode,
        response_serializer=response_class.SerializeToString,
    )


def _decoder(request_class: type[Message]) -> Callable[[bytes], Any]:
    type_name = request_class.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return request_class.FromString(data)
        except (DecodeError, RecursionError, ValueError) as exc:
            return Undecodable(type_name, str(exc) or type(exc).__name__)

    return decode


async def _refuse(request: Undecodable, context: Context) -> None:
    log.info("refused an undecodable %s from %s", request.type_name, context.peer())
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message())


def _unary(implementation: Callable[[Any, Context], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: Context) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(request, context)
        return await implementation(request, context)

    return handle


def _streaming(
    implementation: Callable[[Any, Context], AsyncIterator[Any]],
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await _refuse(request, context)
        async for item in implementation(request, context):
            yield item

    return handle
