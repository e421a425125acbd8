"""Metrics: OpenTelemetry instruments, exported for Prometheus as `/metrics` on the admin HTTP
port (admin_http.py).

Instruments (Prometheus names after translation):

    smartdispatch_decisions_total{verdict, category}
    smartdispatch_decision_reasons_total{verdict, reason}     one per distinct reason code
    smartdispatch_caps_hit_total{cap}                          a cap refused a channel
    smartdispatch_sends_total{channel, provider, outcome}      provider attempts
    smartdispatch_dead_letters_total{channel}
    smartdispatch_rules_reloads_total{result}                  loaded | unchanged | failed
    smartdispatch_rpc_server_duration_seconds{rpc_service, rpc_method, grpc_code}
    smartdispatch_store_duration_seconds{operation, ok}
    smartdispatch_events_total{kind, channel}                  reported delivery and engagement
    smartdispatch_cost_total{channel}                          what sends cost (the rules' costs)

Label values come from bounded sets only (verdicts, categories and reason codes the rules know,
channel and cap names, status codes): never user ids, message ids or addresses. The meter
provider is built here and passed down; no global provider is installed. The registry is
private to one sidecar, so several sidecars (tests) in one process do not collide.
"""

from __future__ import annotations

from aiohttp import web
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

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
)

METER_NAME = "smart_dispatch"
#: Latency bucket bounds (s): sub-millisecond store calls up to multi-second provider calls.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics(TelemetryHooks):
    """The instruments, fed by telemetry events. With a no-op meter every call is free."""

    def __init__(self, meter: Meter) -> None:
        self._decisions = meter.create_counter(
            "smartdispatch.decisions", description="Decisions taken, by verdict and message category"
        )
        self._reasons = meter.create_counter(
            "smartdispatch.decision.reasons", description="Reason codes of decisions, by verdict"
        )
        self._caps_hit = meter.create_counter(
            "smartdispatch.caps.hit", description="Times a frequency cap refused a channel"
        )
        self._sends = meter.create_counter(
            "smartdispatch.sends", description="Provider attempts, by channel, provider and outcome"
        )
        self._dead_letters = meter.create_counter(
            "smartdispatch.dead_letters", description="Dispatches that failed on every channel"
        )
        self._reloads = meter.create_counter(
            "smartdispatch.rules.reloads", description="Loads of the rules directory, by result"
        )
        self._rpc = meter.create_histogram(
            "smartdispatch.rpc.server.duration",
            unit="s",
            description="Duration of served RPCs",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self._events = meter.create_counter(
            "smartdispatch.events", description="Reported delivery and engagement events, by kind and channel"
        )
        self._cost = meter.create_counter(
            "smartdispatch.cost", description="What sends cost, by channel (the rules' channel costs)"
        )
        self._store = meter.create_histogram(
            "smartdispatch.store.duration",
            unit="s",
            description="Duration of store round trips, by operation",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )

    def on_decision(self, event: DecisionMade) -> None:
        decision = event.decision
        verdict = decision.verdict.value
        self._decisions.add(1, {"verdict": verdict, "category": event.request.message.category})
        for code in dict.fromkeys(r.code for r in decision.reasons):
            self._reasons.add(1, {"verdict": verdict, "reason": code})

    def on_caps_refused(self, event: CapsRefused) -> None:
        for cap in event.caps:
            self._caps_hit.add(1, {"cap": cap})

    def on_send_attempt(self, event: SendAttempted) -> None:
        labels = {"channel": event.channel, "provider": event.provider, "outcome": event.outcome}
        self._sends.add(1, labels)

    def on_dead_letter(self, event: DeadLettered) -> None:
        self._dead_letters.add(1, {"channel": event.channel})

    def on_rules_load(self, event: RulesLoaded) -> None:
        self._reloads.add(1, {"result": event.result})

    def on_rpc(self, event: RpcFinished) -> None:
        labels = {"rpc_service": event.service, "rpc_method": event.method, "grpc_code": event.code}
        self._rpc.record(event.duration_s, labels)

    def on_store_call(self, event: StoreCallFinished) -> None:
        self._store.record(event.duration_s, {"operation": event.operation, "ok": str(event.ok).lower()})

    def on_counted(self, event: Counted) -> None:
        if event.metric == "cost":
            self._cost.add(event.amount, {"channel": event.channel})
        else:
            self._events.add(event.amount, {"kind": event.metric, "channel": event.channel})


def noop_meter() -> Meter:
    return NoOpMeterProvider().get_meter(METER_NAME)


def prometheus_meter_provider(resource: Resource | None = None) -> tuple[MeterProvider, CollectorRegistry]:
    """A meter provider whose only reader is a Prometheus pull reader on a private registry."""
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    provider = MeterProvider(
        metric_readers=[reader],
        resource=resource or Resource.create({"service.name": "smart-dispatch"}),
        shutdown_on_exit=False,
    )
    return provider, registry


def metrics_routes(registry: CollectorRegistry) -> list[web.RouteDef]:
    """`GET /metrics` (and HEAD) for the admin HTTP port (admin_http.py): the registry in the
    Prometheus text format, or OpenMetrics when the Accept header asks for it. Other methods
    are answered 405 by the router."""

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    return [web.get("/metrics", metrics)]
