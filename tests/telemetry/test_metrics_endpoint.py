"""Metrics as Prometheus sees them: scraped over HTTP from the running sidecar's `/metrics`."""

from __future__ import annotations

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App
from smart_dispatch.telemetry import Telemetry

from tests.e2e.decide_builders import decide_request
from tests.support.waiting import eventually
from tests.telemetry.conftest import ADDRESSES, EMAIL, PHONE, USER

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(telemetry: Telemetry) -> tuple[str, Samples]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{telemetry.metrics_port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope_")}
            samples[(sample.name, frozenset(labels.items()))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


async def test_decisions_caps_rpcs_and_store_calls_are_counted(app, stub, telemetry):
    # Given two promos for one person (the second is over the hourly cap) and a deny-listed one
    for _ in range(2):
        await stub.Decide(decide_request("promo", user=USER, addresses=ADDRESSES))
    await stub.AddListMember(pb.AddListMemberRequest(list=pb.LIST_KIND_DENY, user_id="user-denied"))
    await stub.Decide(decide_request("otp", user="user-denied", addresses=ADDRESSES))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Decide(decide_request("nope", user=USER, addresses=ADDRESSES))

    # When Prometheus scrapes the sidecar (once the refused call is recorded: `context.abort`
    # answers the client just before the handler returns)
    async def all_recorded() -> tuple[str, Samples] | None:
        text, samples = await scrape(telemetry)
        return (text, samples) if value(samples, rpc, grpc_code="INVALID_ARGUMENT", **decide) else None

    rpc = "smartdispatch_rpc_server_duration_seconds_count"
    service = "smartdispatch.v1.SmartDispatchService"
    decide = {"rpc_service": service, "rpc_method": "Decide"}
    text, samples = await eventually(all_recorded, timeout_s=5, what="the refused call in the metrics")

    # Then decisions are counted by verdict and category, and their reasons by code
    assert value(samples, "smartdispatch_decisions_total", verdict="send", category="promo") == 1
    assert value(samples, "smartdispatch_decisions_total", verdict="suppress", category="promo") == 1
    assert value(samples, "smartdispatch_decisions_total", verdict="suppress", category="otp") == 1
    reasons = "smartdispatch_decision_reasons_total"
    assert value(samples, reasons, verdict="send", reason="channel_selected") == 1
    assert value(samples, reasons, verdict="suppress", reason="cap_exceeded") == 1
    assert value(samples, reasons, verdict="suppress", reason="deny_listed") == 1
    assert value(samples, "smartdispatch_caps_hit_total", cap="promo_hourly") == 1

    # And RPC latencies per method and status, store latencies per operation
    assert value(samples, rpc, rpc_service=service, rpc_method="Decide", grpc_code="OK") == 3
    assert value(samples, rpc, rpc_service=service, rpc_method="Decide", grpc_code="INVALID_ARGUMENT") == 1
    assert value(samples, rpc, rpc_service=service, rpc_method="AddListMember", grpc_code="OK") == 1
    bucket = "smartdispatch_rpc_server_duration_seconds_bucket"
    assert value(samples, bucket, rpc_service=service, rpc_method="Decide", grpc_code="OK", le="+Inf") == 3
    store = "smartdispatch_store_duration_seconds_count"
    assert value(samples, store, operation="counters.reserve", ok="true") == 2
    assert value(samples, store, operation="user_state.read", ok="true") == 3
    assert value(samples, "smartdispatch_rules_reloads_total", result="loaded") == 1

    # And no user id, address or message id is a label value
    for secret in (USER, "user-denied", PHONE, EMAIL):
        assert secret not in text
    assert "message_id" not in text and "user" not in {k for ls in samples for k, _ in ls[1]}


async def test_sends_and_dead_letters_are_counted_by_channel_and_outcome(app, stub, telemetry, sink):
    # Given an SMS gateway that fails once, then accepts; then refuses for good
    sink.script.extend([503])

    async def dispatch(category: str) -> str:
        decide = decide_request(category, user=USER, addresses=ADDRESSES)
        accepted = await stub.Dispatch(pb.DispatchRequest(message=decide.message, recipient=decide.recipient))
        return accepted.dispatch_id

    async def settled(dispatch_id: str) -> pb.DispatchStatus | None:
        status = (await stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=dispatch_id))).status
        return status if status.state in (pb.DISPATCH_STATE_DELIVERED, pb.DISPATCH_STATE_FAILED) else None

    otp = await dispatch("otp")
    delivered = await eventually(lambda: settled(otp), what="delivered")
    assert delivered.state == pb.DISPATCH_STATE_DELIVERED
    sink.script.extend([400])
    notice = await dispatch("notice")
    failed = await eventually(lambda: settled(notice), what="dead letter")
    assert failed.state == pb.DISPATCH_STATE_FAILED and failed.dead_lettered

    # When Prometheus scrapes the sidecar
    text, samples = await scrape(telemetry)

    # Then every provider attempt and the dead letter are counted
    sends = "smartdispatch_sends_total"
    assert value(samples, sends, channel="sms", provider="http_sms", outcome="retryable_error") == 1
    assert value(samples, sends, channel="sms", provider="http_sms", outcome="delivered") == 1
    assert value(samples, sends, channel="sms", provider="http_sms", outcome="permanent_error") == 1
    assert value(samples, "smartdispatch_dead_letters_total", channel="sms") == 1
    assert USER not in text and PHONE not in text


async def test_rule_reloads_are_counted_by_result(app, channel, telemetry, rules_dir):
    admin = pb_grpc.RulesAdminServiceStub(channel)
    await admin.ReloadRules(pb.ReloadRulesRequest())  # same content
    (rules_dir / "broken.yaml").write_text("rules:\n  - {name: x, when: {category: otp}, then: {nope: 1}}\n")
    with pytest.raises(grpc.aio.AioRpcError) as rejected:
        await admin.ReloadRules(pb.ReloadRulesRequest())
    assert rejected.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    _, samples = await scrape(telemetry)

    reloads = "smartdispatch_rules_reloads_total"
    assert value(samples, reloads, result="loaded") == 1
    assert value(samples, reloads, result="unchanged") == 1
    assert value(samples, reloads, result="failed") == 1


async def test_the_endpoint_serves_only_metrics(app, telemetry):
    async with httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{telemetry.metrics_port}"
        assert (await client.get(f"{base}/")).status_code == 404
        assert (await client.post(f"{base}/metrics")).status_code == 405
        openmetrics = await client.get(f"{base}/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


async def test_metrics_are_off_unless_configured(settings):
    async with App(settings) as running:
        assert running.runtime is not None
        assert running.runtime.telemetry.metrics_port is None


async def test_undecodable_requests_are_counted_as_invalid_argument(app, channel, telemetry):
    # Given bodies that are not protobuf, or hold a string that is not UTF-8
    decide_path = "/smartdispatch.v1.SmartDispatchService/Decide"
    for body in (b"\xff", b"\x0a\x03\xff\xfe\xfd"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(decide_path)(body)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Then the RPC metrics count both under INVALID_ARGUMENT
    async def counted() -> Samples | None:
        _, samples = await scrape(telemetry)
        labels = {
            "rpc_service": "smartdispatch.v1.SmartDispatchService",
            "rpc_method": "Decide",
            "grpc_code": "INVALID_ARGUMENT",
        }
        found = value(samples, "smartdispatch_rpc_server_duration_seconds_count", **labels)
        return samples if found >= 2 else None

    await eventually(counted, timeout_s=5, what="two undecodable calls in the metrics")
