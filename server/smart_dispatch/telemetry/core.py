"""`Telemetry`: the tracer, the hooks (metrics, decision log, extras) and the admin HTTP port
of one sidecar, built once by the composition root and passed down.

`Telemetry.noop()` (the default everywhere) records nothing and costs next to nothing, so unit
tests and `rules test` need no setup. Every report goes through `call_hook`: a hook that raises
is logged and the decision or send carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from smart_dispatch.admin_http import AdminServer
from smart_dispatch.domain import DecideRequest, Decision
from smart_dispatch.telemetry.audit import AuditLog
from smart_dispatch.telemetry.base import (
    CapsRefused,
    Counted,
    DeadLettered,
    DecisionMade,
    RpcFinished,
    RulesLoaded,
    SendAttempted,
    StoreCallFinished,
    TelemetryHooks,
    call_hook,
)
from smart_dispatch.telemetry.metrics import Metrics, metrics_routes, noop_meter, prometheus_meter_provider
from smart_dispatch.telemetry.redact import pseudonym_key
from smart_dispatch.telemetry.tracing import (
    TRACER_NAME,
    TelemetryInterceptor,
    build_tracer_provider,
    caller_context,
)

if TYPE_CHECKING:
    from smart_dispatch.config import Settings

Attributes = Mapping[str, Any]  # str, bool, int, float or sequences of one of them


class Telemetry:
    """Tracing, metrics and the decision log of one sidecar (or worker)."""

    def __init__(
        self,
        tracer: trace.Tracer | None = None,
        *,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
        hooks: Sequence[TelemetryHooks] = (),
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        admin: AdminServer | None = None,
    ) -> None:
        self.tracer = tracer or trace.NoOpTracer()
        self.metrics = metrics or Metrics(noop_meter())
        self.audit = audit or AuditLog(None)
        # A no-op meter's instruments are not fed at all: no hook, no timing.
        self.hooks: tuple[TelemetryHooks, ...] = (
            *((metrics,) if metrics is not None else ()),
            self.audit,
            *hooks,
        )
        self._tracing = not isinstance(self.tracer, trace.NoOpTracer)
        self._subscribers = _subscribers(self.hooks)
        self._records_rpcs = self._tracing or bool(self._subscribers["on_rpc"])
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        #: the admin HTTP port serving `/metrics` (None: not configured); see `start()`
        self.admin = admin

    def add_hook(self, hook: TelemetryHooks) -> None:
        """Report to `hook` from now on too (e.g. the decision log, built with the stores)."""
        self.hooks = (*self.hooks, hook)
        self._subscribers = _subscribers(self.hooks)
        self._records_rpcs = self._tracing or bool(self._subscribers["on_rpc"])

    def remove_hook(self, hook: TelemetryHooks) -> None:
        self.hooks = tuple(h for h in self.hooks if h is not hook)
        self._subscribers = _subscribers(self.hooks)
        self._records_rpcs = self._tracing or bool(self._subscribers["on_rpc"])

    @classmethod
    def noop(cls) -> Telemetry:
        return cls()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        span_exporter: SpanExporter | None = None,
        metrics_port: int | None = None,
        hooks: Sequence[TelemetryHooks] = (),
    ) -> Telemetry:
        """Exporter, sampler, metrics port and decision log from `settings`. `span_exporter`
        replaces the configured exporter (tests); `metrics_port` replaces `settings.metrics_port`
        and then 0 means any free port (settings: 0 means no admin port).
        Raises ConfigurationError for bad exporter names or ratios."""
        s = settings
        resource = Resource.create({"service.name": "smart-dispatch"})
        tracer_provider = build_tracer_provider(
            s.otel_exporter,
            s.otel_endpoint,
            s.trace_sample_ratio,
            resource=resource,
            span_exporter=span_exporter,
        )
        tracer = tracer_provider.get_tracer(TRACER_NAME) if tracer_provider is not None else None
        port = (s.metrics_port or None) if metrics_port is None else metrics_port
        meter_provider = admin = None
        metrics = None
        if port is not None:
            meter_provider, registry = prometheus_meter_provider(resource)
            metrics = Metrics(meter_provider.get_meter(TRACER_NAME))
            admin = AdminServer(s.host, port)
            admin.add_routes(metrics_routes(registry))
        return cls(
            tracer,
            metrics=metrics,
            audit=AuditLog.to_target(s.audit_log, pseudonym_key(s.log_key)),
            hooks=hooks,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            admin=admin,
        )

    async def start(self) -> None:
        """Serve the admin HTTP port (if configured). Idempotent. The process that runs the
        telemetry calls it once its routes are complete (`serve` adds the console first)."""
        if self.admin is not None:
            await self.admin.start()

    @property
    def metrics_port(self) -> int | None:
        """The admin HTTP port once it serves (it serves `/metrics`)."""
        return None if self.admin is None else self.admin.port

    async def close(self) -> None:
        """Stop the admin HTTP port, close hooks, flush and stop exporters."""
        if self.admin is not None:
            await self.admin.close()
        for hook in self.hooks:
            call_hook(lambda h: h.close(), hook)
        if self._tracer_provider is not None:
            await asyncio.to_thread(self._tracer_provider.shutdown)
        if self._meter_provider is not None:
            self._meter_provider.shutdown()

    def interceptor(self) -> TelemetryInterceptor | None:
        """The server interceptor, or None when neither spans nor RPC reports are recorded
        (any interceptor costs every call; `caller_trace` then carries the caller's trace)."""
        if not self._records_rpcs:
            return None
        return TelemetryInterceptor(self.tracer, self.rpc_finished)

    def caller_trace(self, metadata: Callable[[], Any]) -> contextlib.AbstractContextManager[None]:
        """Around a decision RPC: make the caller's `traceparent` (from `metadata()`, the call's
        invocation metadata) current, so the decision log quotes the caller's trace. Does
        nothing when the interceptor already did so."""
        if self._records_rpcs:
            return _UNTIMED
        parent = caller_context(metadata())
        if parent is None:
            return _UNTIMED
        return _attached(parent)

    # -- spans -------------------------------------------------------------------------------

    def span(
        self, name: str, attributes: Attributes | None = None, *, kind: SpanKind = SpanKind.INTERNAL
    ) -> contextlib.AbstractContextManager[trace.Span]:
        """A child of the current span. An exception marks it ERROR with the exception's type
        only (messages may quote request data). Without tracing, the current span stays current
        and nothing is allocated (a no-op tracer's child would only repeat its parent)."""
        if not self._tracing:
            return _NO_SPAN
        return self._span(name, attributes, kind)

    @contextlib.contextmanager
    def _span(self, name: str, attributes: Attributes | None, kind: SpanKind) -> Iterator[trace.Span]:
        with self.tracer.start_as_current_span(
            name, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    def traceparent(self) -> str:
        """The current span as a W3C traceparent; "" when this sidecar records no spans."""
        if not self._tracing:
            return ""
        ctx = trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return ""
        trace_id, span_id = trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)
        return f"00-{trace_id}-{span_id}-{ctx.trace_flags:02x}"

    @contextlib.contextmanager
    def continue_trace(self, traceparent: str) -> Iterator[None]:
        """Make the span `traceparent` names (`traceparent()`, kept on the dispatch record) the
        current parent: the sender pool's work joins the trace of the decision that accepted it,
        whichever sidecar took it. A malformed or empty value continues nothing."""
        parts = traceparent.split("-")
        try:
            trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
        except (IndexError, ValueError):
            yield
            return
        parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1))
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
        try:
            yield
        finally:
            otel_context.detach(token)

    def store_call(self, operation: str) -> contextlib.AbstractContextManager[None]:
        """Time one store round trip (`smartdispatch_store_duration_seconds`); free when no hook
        listens."""
        if not self._subscribers["on_store_call"]:
            return _UNTIMED
        return self._store_call(operation)

    @contextlib.contextmanager
    def _store_call(self, operation: str) -> Iterator[None]:
        started, ok = time.perf_counter(), False
        try:
            yield
            ok = True
        finally:
            self._report("on_store_call", StoreCallFinished(operation, time.perf_counter() - started, ok))

    # -- reports -----------------------------------------------------------------------------

    def decided(self, request: DecideRequest, decision: Decision, at: datetime) -> None:
        """Annotate the current (decision) span and report the decision to every hook."""
        span = trace.get_current_span()
        if self._tracing:
            span.set_attributes(
                {
                    "smartdispatch.decision_id": decision.decision_id,
                    "smartdispatch.ruleset_version": decision.ruleset_version,
                    "smartdispatch.verdict": decision.verdict.value,
                    "smartdispatch.rules.fired": list(decision.matched_rules),
                    "smartdispatch.reasons": [r.code for r in decision.reasons],
                    "smartdispatch.channel": decision.steps[0].channel if decision.steps else "",
                }
            )
        if not self._subscribers["on_decision"]:
            return
        ctx = span.get_span_context()
        if ctx.is_valid:  # the caller's trace, even when this sidecar records no spans
            event = DecisionMade(
                request,
                decision,
                at,
                trace_id=trace.format_trace_id(ctx.trace_id),
                span_id=trace.format_span_id(ctx.span_id),
                sampled=ctx.trace_flags.sampled,
            )
        else:
            event = DecisionMade(request, decision, at)
        self._report("on_decision", event)

    def caps_refused(self, channel: str, caps: Sequence[str]) -> None:
        self._report("on_caps_refused", CapsRefused(channel, tuple(caps)))

    def send_attempted(self, event: SendAttempted) -> None:
        """Annotate the current (send) span and report the attempt."""
        trace.get_current_span().set_attributes(
            {
                "smartdispatch.channel": event.channel,
                "smartdispatch.provider": event.provider,
                "smartdispatch.attempt": event.number,
                "smartdispatch.outcome": event.outcome,
            }
        )
        if event.outcome != "delivered":
            trace.get_current_span().set_status(Status(StatusCode.ERROR, event.outcome))
        self._report("on_send_attempt", event)

    def dead_lettered(self, event: DeadLettered) -> None:
        self._report("on_dead_letter", event)

    def counted(self, event: Counted) -> None:
        self._report("on_counted", event)

    def rules_loaded(self, result: str) -> None:
        self._report("on_rules_load", RulesLoaded(result))

    def rpc_finished(self, event: RpcFinished) -> None:
        self._report("on_rpc", event)

    def _report(self, method: str, event: object) -> None:
        for hook in self._subscribers[method]:
            call_hook(hook, event)


@contextlib.contextmanager
def _attached(parent: otel_context.Context) -> Iterator[None]:
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


_NO_SPAN: contextlib.nullcontext[trace.Span] = contextlib.nullcontext(trace.INVALID_SPAN)
_UNTIMED: contextlib.nullcontext[None] = contextlib.nullcontext()
_HOOK_METHODS = tuple(name for name in vars(TelemetryHooks) if name.startswith("on_"))


def _subscribers(hooks: Sequence[TelemetryHooks]) -> dict[str, tuple[Callable[[Any], None], ...]]:
    """Per hook method, the bound methods of the hooks that override it (the base class's
    methods do nothing, so calling them is skipped)."""
    return {
        name: tuple(
            getattr(hook, name)
            for hook in hooks
            if getattr(type(hook), name, None) not in (None, getattr(TelemetryHooks, name))
        )
        for name in _HOOK_METHODS
    }
