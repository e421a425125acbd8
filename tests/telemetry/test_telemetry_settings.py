"""Telemetry configuration: SD_* variables, exporters by name, and the no-op default."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from smart_dispatch.config import Settings, settings_from_env
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.telemetry import Telemetry

from tests.support.sinks import HttpSink


def test_telemetry_settings_come_from_sd_variables():
    settings = settings_from_env(
        {
            "SD_OTEL_EXPORTER": "otlp-http",
            "SD_OTEL_ENDPOINT": "http://collector:4318",
            "SD_TRACE_SAMPLE_RATIO": "0.25",
            "SD_METRICS_PORT": "9464",
            "SD_AUDIT_LOG": "/var/log/smart-dispatch/decisions.jsonl",
        }
    )

    assert settings.otel_exporter == "otlp-http"
    assert settings.otel_endpoint == "http://collector:4318"
    assert settings.trace_sample_ratio == 0.25
    assert settings.metrics_port == 9464
    assert settings.audit_log == "/var/log/smart-dispatch/decisions.jsonl"
    defaults = Settings()
    assert (defaults.otel_exporter, defaults.metrics_port, defaults.audit_log) == ("none", 0, "")


@pytest.mark.parametrize("exporter", ["otlp-grpc", "otlp-http", "console", "none"])
async def test_every_exporter_can_be_built_and_closed(exporter: str):
    # ratio 0: nothing is exported (no collector runs here), but the pipeline is built for real
    settings = Settings(otel_exporter=exporter, otel_endpoint="", trace_sample_ratio=0.0)
    telemetry = Telemetry.from_settings(settings)
    with telemetry.span("smoke") as span:
        span.set_attribute("smartdispatch.test", True)
    assert telemetry.metrics_port is None  # SD_METRICS_PORT=0: no endpoint
    await telemetry.close()


def test_bad_telemetry_settings_are_configuration_errors():
    with pytest.raises(ConfigurationError, match="unknown trace exporter 'jaeger'"):
        Telemetry.from_settings(Settings(otel_exporter="jaeger"))
    with pytest.raises(ConfigurationError, match="SD_TRACE_SAMPLE_RATIO"):
        settings_from_env({"SD_TRACE_SAMPLE_RATIO": "half"})


async def test_the_no_op_default_records_nothing_and_hands_no_trace_to_the_senders():
    telemetry = Telemetry.noop()
    with telemetry.span("decide") as span:
        assert not span.is_recording()
        assert telemetry.traceparent() == ""
    await telemetry.close()


async def test_otlp_http_exports_to_the_configured_endpoint():
    # Given a collector (an HTTP server on loopback) and a sidecar exporting to it
    sink = await HttpSink().start()
    telemetry = Telemetry.from_settings(Settings(otel_exporter="otlp-http", otel_endpoint=sink.url))
    with telemetry.span("exported", {"smartdispatch.verdict": "send"}):
        pass

    # When the telemetry closes (flushing the batch)
    await telemetry.close()
    await sink.stop()

    # Then the span arrived as OTLP protobuf at /v1/traces
    posts = [r for r in sink.requests if r.path == "/v1/traces"]
    assert len(posts) == 1
    assert posts[0].headers["content-type"] == "application/x-protobuf"
    exported = ExportTraceServiceRequest.FromString(posts[0].body)
    names = [s.name for rs in exported.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert names == ["exported"]


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.received: list[ExportTraceServiceRequest] = []

    async def Export(self, request: ExportTraceServiceRequest, context: object) -> ExportTraceServiceResponse:
        self.received.append(request)
        return ExportTraceServiceResponse()


async def test_otlp_grpc_exports_to_the_configured_endpoint():
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        settings = Settings(otel_exporter="otlp-grpc", otel_endpoint=f"http://127.0.0.1:{port}")
        telemetry = Telemetry.from_settings(settings)
        with telemetry.span("exported"):
            pass
        await telemetry.close()
    finally:
        await server.stop(None)

    names = [
        s.name
        for r in collector.received
        for rs in r.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    assert names == ["exported"]
    resource = collector.received[0].resource_spans[0].resource
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "smart-dispatch"
