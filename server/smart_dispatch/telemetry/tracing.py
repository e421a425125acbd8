"""Traces: a tracer provider built from settings, and the gRPC server interceptor.

Exporters: `otlp-grpc` | `otlp-http` | `console` | `none` (no provider at all: a no-op tracer that
still carries the caller's context). Sampling: parent-based trace-id ratio, so a caller's sampling
decision (the `traceparent` flags) is honoured and only new traces are sampled by ratio. No
global provider is installed: the tracer is passed down from the composition root.

The interceptor continues the caller's W3C `traceparent` / `tracestate` from the invocation
metadata, opens one SERVER span per RPC named `package.Service/Method` around the actual call
(the handler's behaviour, not just the handler lookup), records `rpc.*` attributes and the
status, and reports the RPC's duration. Health checks and reflection are not traced. Any
interceptor costs every call, so it is installed only when spans or RPC metrics are recorded;
without it the decision RPCs read the caller's `traceparent` themselves (`caller_context`), so
the decision log still quotes the caller's trace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from smart_dispatch.errors import ConfigurationError
from smart_dispatch.telemetry.base import RpcFinished

EXPORTERS = ("otlp-grpc", "otlp-http", "console", "none")
UNTRACED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
TRACER_NAME = "smart_dispatch"
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_HEADERS = frozenset(_PROPAGATOR.fields)

if TYPE_CHECKING:  # grpc's classes are generic in the stubs only
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = Context = Any
    _Interceptor = grpc.aio.ServerInterceptor


def build_tracer_provider(
    exporter: str,
    endpoint: str = "",
    sample_ratio: float = 1.0,
    *,
    resource: Resource | None = None,
    span_exporter: SpanExporter | None = None,
) -> TracerProvider | None:
    """A provider exporting to `exporter` (see EXPORTERS); None for `none`. `span_exporter`
    replaces the configured exporter and is called synchronously (tests: in-memory).
    Raises ConfigurationError for an unknown exporter or a ratio outside [0, 1]."""
    if exporter not in EXPORTERS:
        raise ConfigurationError(f"unknown trace exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    if not 0.0 <= sample_ratio <= 1.0:
        raise ConfigurationError(f"trace sample ratio {sample_ratio} is not between 0 and 1")
    if exporter == "none" and span_exporter is None:
        return None
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        resource=resource or Resource.create({"service.name": "smart-dispatch"}),
        shutdown_on_exit=False,
    )
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_span_exporter(exporter, endpoint)))
    return provider


def _span_exporter(exporter: str, endpoint: str) -> SpanExporter:
    """The exporter named by the settings; an empty endpoint means the exporter's default
    (or the standard OTEL_EXPORTER_OTLP_* environment variables)."""
    if exporter == "console":
        return ConsoleSpanExporter()
    if exporter == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint or None)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    if endpoint and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return HttpExporter(endpoint=endpoint or None)


def caller_context(metadata: Sequence[tuple[str, Any]] | None) -> otel_context.Context | None:
    """The caller's trace context from W3C `traceparent` / `tracestate` metadata, if any."""
    carrier = {str(k): v for k, v in (metadata or ()) if k in _TRACE_HEADERS}
    if "traceparent" not in carrier:
        return None
    return _PROPAGATOR.extract(carrier)


def is_traced(method: str) -> bool:
    return not method.startswith(UNTRACED_PREFIXES)


class TelemetryInterceptor(_Interceptor):
    """One SERVER span and one `RpcFinished` report per RPC (health and reflection excepted).
    Put it first in the server's interceptors so it also sees calls others refuse."""

    def __init__(self, tracer: trace.Tracer, on_rpc: Callable[[RpcFinished], None]) -> None:
        self._tracer = tracer
        self._on_rpc = on_rpc

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or not is_traced(details.method):
            return handler
        name = details.method.lstrip("/")
        service, _, method = name.rpartition("/")
        carrier = {str(k): v for k, v in (details.invocation_metadata or ())}
        parent = _PROPAGATOR.extract(carrier)
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

        def start() -> Any:
            return self._tracer.start_as_current_span(
                name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )

        def finish(span: trace.Span, code: grpc.StatusCode, started: float) -> None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
            self._on_rpc(RpcFinished(service, method, code.name, time.perf_counter() - started))

        if handler.response_streaming:
            return _with_behaviour(handler, _streaming(_behaviour(handler), start, finish))
        return _with_behaviour(handler, _unary(_behaviour(handler), start, finish))


Start = Callable[[], Any]
Finish = Callable[[trace.Span, grpc.StatusCode, float], None]


def _unary(behaviour: Callable[..., Any], start: Start, finish: Finish) -> Callable[..., Any]:
    async def traced(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        with start() as span:
            try:
                response = await behaviour(request, context)
            except BaseException as exc:
                finish(span, _code_of(context, exc), started)
                raise
            finish(span, _code_of(context), started)
            return response

    return traced


def _streaming(behaviour: Callable[..., Any], start: Start, finish: Finish) -> Callable[..., Any]:
    async def traced(request: Any, context: Context) -> AsyncIterator[Any]:
        started = time.perf_counter()
        with start() as span:
            try:
                result = behaviour(request, context)
                if hasattr(result, "__aiter__"):
                    async for response in result:
                        yield response
                else:  # a coroutine writing with context.write()
                    await result
            except BaseException as exc:
                finish(span, _code_of(context, exc), started)
                raise
            finish(span, _code_of(context), started)

    return traced


def _code_of(context: Context, exc: BaseException | None = None) -> grpc.StatusCode:
    """The status the call ends with: the one set (or aborted with), else OK, or what an
    escaping exception turns into."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _behaviour(handler: Handler) -> Callable[..., Any]:
    if handler.request_streaming and handler.response_streaming:
        return handler.stream_stream  # type: ignore[return-value]
    if handler.request_streaming:
        return handler.stream_unary  # type: ignore[return-value]
    if handler.response_streaming:
        return handler.unary_stream  # type: ignore[return-value]
    return handler.unary_unary  # type: ignore[return-value]


def _with_behaviour(handler: Handler, behaviour: Callable[..., Any]) -> Handler:
    """A copy of `handler` with its behaviour replaced (same kind, same (de)serializers)."""
    if handler.request_streaming and handler.response_streaming:
        factory: Callable[..., Handler] = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        factory = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        factory = grpc.unary_stream_rpc_method_handler
    else:
        factory = grpc.unary_unary_rpc_method_handler
    return factory(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
