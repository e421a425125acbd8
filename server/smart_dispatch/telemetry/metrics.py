"""Metrics: OpenTelemetry instruments, exported for Prometheus on an HTTP `/metrics` endpoint.

Instruments (Prometheus names after translation):

    smartdispatch_decisions_total{verdict, category}
    smartdispatch_decision_reasons_total{verdict, reason}     one per distinct reason code
    smartdispatch_caps_hit_total{cap}                          a cap refused a channel
    smartdispatch_sends_total{channel, provider, outcome}      provider attempts
    smartdispatch_dead_letters_total{channel}
    smartdispatch_rules_reloads_total{result}                  loaded | unchanged | failed
    smartdispatch_rpc_server_duration_seconds{rpc_service, rpc_method, grpc_code}
    smartdispatch_store_duration_seconds{operation, ok}

Label values come from bounded sets only (verdicts, categories and reason codes the rules know,
channel and cap names, status codes): never user ids, message ids or addresses. The meter
provider is built here and passed down; no global provider is installed. The registry is
private to one sidecar, so several sidecars (tests) in one process do not collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from smart_dispatch.telemetry.base import (
    CapsRefused,
    DeadLettered,
    DecisionMade,
    RpcFinished,
    RulesLoaded,
    SendAttempted,
    StoreCallFinished,
    TelemetryHooks,
)

log = logging.getLogger(__name__)
METER_NAME = "smart_dispatch"
#: Latency bucket bounds (s): sub-millisecond store calls up to multi-second provider calls.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_READ_TIMEOUT_S = 5.0


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


class MetricsEndpoint:
    """A minimal HTTP/1.1 server on the event loop answering `GET /metrics` with the registry
    in the Prometheus text (or OpenMetrics, by Accept header) format. One request per
    connection; anything else is 404 / 405."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int | None:
        """The bound port once started (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> int:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self._host, self._port)
            log.info("metrics on http://%s:%d/metrics", self._host, self.port)
        port = self.port
        assert port is not None
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, content_type, body = await asyncio.wait_for(self._answer(reader), _READ_TIMEOUT_S)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("metrics endpoint failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        request_line = (await reader.readline()).decode("latin-1").split()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if len(request_line) < 2:
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target = request_line[0], request_line[1]
        if target.split("?", 1)[0] != "/metrics":
            return "404 Not Found", "text/plain", b"try /metrics\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = encoder(self._registry)
        return "200 OK", content_type, b"" if method == "HEAD" else body
