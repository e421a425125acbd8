"""Traces seen from a real server: the caller's trace continued, the span tree of Decide and of
a dispatch's send attempts, attributes present and no personal data anywhere in a span."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.telemetry import Telemetry
from smart_dispatch.telemetry.tracing import build_tracer_provider

from tests.e2e.decide_builders import decide_request
from tests.support.waiting import eventually
from tests.telemetry.conftest import ADDRESSES, EMAIL, INBOX, PHONE, USER

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = (("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"), ("tracestate", "vendor=opaque"))
DECIDE = "smartdispatch.v1.SmartDispatchService/Decide"
DISPATCH = "smartdispatch.v1.SmartDispatchService/Dispatch"


def by_name(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def only(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


async def settled(spans: InMemorySpanExporter, name: str, count: int) -> list[ReadableSpan]:
    """The spans named `name` once there are `count` of them. A call that fails is answered by
    `context.abort` before the handler (and so its span) has returned: the span ends just after."""

    async def enough() -> list[ReadableSpan] | None:
        found = by_name(spans, name)
        return found if len(found) >= count else None

    return await eventually(enough, timeout_s=5, what=f"{count} {name} spans")


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def everything_recorded(spans: InMemorySpanExporter) -> str:
    """Every name, attribute, event and status text of every span, as one string."""
    parts: list[str] = []
    for span in spans.get_finished_spans():
        parts += [span.name, str(span.status.description)]
        parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        for event in span.events:
            parts += [event.name, *(f"{k}={v}" for k, v in (event.attributes or {}).items())]
    return "\n".join(parts)


async def test_decide_continues_the_callers_trace_with_children_for_rules_and_caps(stub, spans):
    # Given a caller that is itself traced
    request = decide_request("promo", user=USER, addresses=ADDRESSES)

    # When it asks for a decision, passing its W3C context in the metadata
    response = await stub.Decide(request, metadata=TRACEPARENT)

    # Then the server span continues the caller's trace, under the caller's span
    server = only(spans, DECIDE)
    assert server.kind is SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert server.parent.is_remote
    assert server.attributes is not None
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.service"] == "smartdispatch.v1.SmartDispatchService"
    assert server.attributes["rpc.method"] == "Decide"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.status.status_code is not StatusCode.ERROR

    # And the decision, rule evaluation and cap round trip are its descendants
    decide = only(spans, "decide")
    rules = only(spans, "rules.evaluate")
    caps = only(spans, "caps.reserve")
    assert {s.context.trace_id for s in (decide, rules, caps)} == {server.context.trace_id}
    assert parent_of(decide) == server.context.span_id
    assert parent_of(rules) == decide.context.span_id
    assert parent_of(caps) == decide.context.span_id

    # And they carry what explains the decision
    assert decide.attributes is not None
    assert decide.attributes["smartdispatch.decision_id"] == response.decision_id
    assert decide.attributes["smartdispatch.ruleset_version"] == response.ruleset_version
    assert decide.attributes["smartdispatch.verdict"] == "send"
    assert decide.attributes["smartdispatch.category"] == "promo"
    assert decide.attributes["smartdispatch.message_id"] == request.message.id
    assert decide.attributes["smartdispatch.channel"] == "email"
    assert rules.attributes is not None
    assert rules.attributes["smartdispatch.ruleset_version"] == response.ruleset_version
    assert rules.attributes["smartdispatch.rules.matched"] == 1
    assert caps.attributes is not None
    assert list(caps.attributes["smartdispatch.caps"]) == ["promo_hourly"]  # type: ignore[arg-type]
    assert caps.attributes["smartdispatch.caps.allowed"] is True


async def test_a_call_without_context_starts_a_new_trace(stub, spans):
    await stub.Decide(decide_request("otp", user=USER, addresses=ADDRESSES))

    server = only(spans, DECIDE)
    assert server.parent is None
    assert only(spans, "decide").context.trace_id == server.context.trace_id


async def test_no_personal_data_in_any_span(stub, spans):
    # Given decisions that touch every address: sent, capped, refused
    for category in ("otp", "promo", "promo"):
        await stub.Decide(decide_request(category, user=USER, addresses=ADDRESSES), metadata=TRACEPARENT)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Decide(decide_request("otp", user=USER, addresses={"sms": PHONE}, timezone="Mars/Olympus"))

    # Then no phone number, e-mail address, inbox id or user id appears in any span
    assert len(await settled(spans, DECIDE, 4)) == 4
    recorded = everything_recorded(spans)
    for secret in (PHONE, PHONE[1:], EMAIL, INBOX, USER):
        assert secret not in recorded


async def test_a_failed_call_marks_its_span_as_an_error(stub, spans):
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.Decide(decide_request("no-such-category", user=USER, addresses=ADDRESSES))

    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    [server] = await settled(spans, DECIDE, 1)
    assert server.status.status_code is StatusCode.ERROR
    assert server.status.description == "INVALID_ARGUMENT"
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert only(spans, "decide").status.status_code is StatusCode.ERROR


async def test_health_checks_produce_no_spans(channel, stub, spans):
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(3):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), metadata=TRACEPARENT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    assert spans.get_finished_spans() == ()

    # while a real RPC on the same channel is traced
    await stub.CheckListMember(pb.CheckListMemberRequest(user_id=USER))
    assert [s.name for s in spans.get_finished_spans()] == [
        "smartdispatch.v1.SmartDispatchService/CheckListMember"
    ]


async def test_each_send_attempt_of_a_dispatch_is_a_span_in_the_dispatch_trace(stub, spans, sink):
    # Given an SMS gateway that fails once with a 503, then accepts
    sink.script.extend([503])
    decide = decide_request("otp", user=USER, addresses=ADDRESSES)

    # When the message is dispatched
    accepted = await stub.Dispatch(
        pb.DispatchRequest(message=decide.message, recipient=decide.recipient), metadata=TRACEPARENT
    )

    # Then two attempts are traced: a retryable error, then the delivery
    async def two_attempts() -> list[ReadableSpan] | None:
        sends = by_name(spans, "dispatch.send")
        return sends if len(sends) == 2 else None

    first, second = await eventually(two_attempts, what="two send attempt spans")
    server = only(spans, DISPATCH)
    decision = only(spans, "decide")
    assert parent_of(decision) == server.context.span_id
    for attempt in (first, second):
        assert attempt.kind is SpanKind.CLIENT
        assert attempt.context.trace_id == int(CALLER_TRACE, 16)
        assert parent_of(attempt) == decision.context.span_id
        assert attempt.attributes is not None
        assert attempt.attributes["smartdispatch.channel"] == "sms"
        assert attempt.attributes["smartdispatch.provider"] == "http_sms"
        assert attempt.attributes["smartdispatch.dispatch_id"] == accepted.dispatch_id
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes["smartdispatch.attempt"], first.attributes["smartdispatch.outcome"]) == (
        1,
        "retryable_error",
    )
    assert first.status.status_code is StatusCode.ERROR
    assert (second.attributes["smartdispatch.attempt"], second.attributes["smartdispatch.outcome"]) == (
        2,
        "delivered",
    )
    for secret in (PHONE, EMAIL, INBOX, USER):
        assert secret not in everything_recorded(spans)


def test_exporter_and_sampler_settings_are_checked():
    with pytest.raises(ConfigurationError, match="unknown trace exporter 'zipkin'; known: otlp-grpc"):
        build_tracer_provider("zipkin")
    with pytest.raises(ConfigurationError, match="between 0 and 1"):
        build_tracer_provider("console", sample_ratio=1.5)
    assert build_tracer_provider("none") is None


def test_the_sampler_honours_the_callers_decision_and_samples_new_traces_by_ratio():
    spans = InMemorySpanExporter()
    provider = build_tracer_provider("none", sample_ratio=0.0, span_exporter=spans)
    assert provider is not None
    tracer = provider.get_tracer("test")
    sampled_caller = TraceContextTextMapPropagator().extract({"traceparent": TRACEPARENT[0][1]})
    with tracer.start_as_current_span("continued", context=sampled_caller):
        pass
    with tracer.start_as_current_span("new"):
        pass
    provider.shutdown()

    assert [s.name for s in spans.get_finished_spans()] == ["continued"]


async def test_a_server_stream_is_one_span_covering_the_whole_stream(stub, spans):
    decide = decide_request("otp", user=USER, addresses=ADDRESSES)
    accepted = await stub.Dispatch(pb.DispatchRequest(message=decide.message, recipient=decide.recipient))

    states = [
        update.status.state
        async for update in stub.WatchDispatch(
            pb.WatchDispatchRequest(dispatch_id=accepted.dispatch_id), metadata=TRACEPARENT
        )
    ]

    assert states[-1] == pb.DISPATCH_STATE_DELIVERED
    watch = only(spans, "smartdispatch.v1.SmartDispatchService/WatchDispatch")
    assert f"{watch.context.trace_id:032x}" == CALLER_TRACE
    assert watch.attributes is not None and watch.attributes["rpc.grpc.status_code"] == 0
    assert watch.status.status_code is not StatusCode.ERROR


async def test_a_dispatch_sent_by_another_sidecar_continues_the_deciding_trace(
    settings, single_redis, sink, tmp_path
):
    # Given two sidecars sharing one Redis: A accepts dispatches and sends nothing, B only sends,
    # each with its own tracer (as two processes would have)
    shared = settings.with_overrides(store_url=single_redis.url, key_prefix=f"trace{tmp_path.name[-6:]}")
    accepting_spans, sending_spans = InMemorySpanExporter(), InMemorySpanExporter()
    accepting = Telemetry.from_settings(shared, span_exporter=accepting_spans)
    sending = Telemetry.from_settings(shared, span_exporter=sending_spans)
    decide = decide_request("otp", user=USER, addresses=ADDRESSES)
    try:
        async with App(shared.with_overrides(senders=0), accepting) as a:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as channel:
                stub = pb_grpc.SmartDispatchServiceStub(channel)
                # When A accepts a message in the caller's trace
                await stub.Dispatch(
                    pb.DispatchRequest(message=decide.message, recipient=decide.recipient),
                    metadata=TRACEPARENT,
                )
            decision = only(accepting_spans, "decide")
            # and B sends it
            async with App(shared.with_overrides(port=0), sending):
                attempt = (await settled(sending_spans, "dispatch.send", 1))[0]
        # Then B's send attempt is a child of A's decision, in the caller's trace
        assert attempt.context.trace_id == int(CALLER_TRACE, 16)
        assert parent_of(attempt) == decision.context.span_id
        assert sink.requests, "the message was sent"
    finally:
        await accepting.close()
        await sending.close()
