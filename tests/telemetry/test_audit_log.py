"""The decision log: JSON lines with masked personal data, `GetDecision` and `smart-dispatch why`."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App
from smart_dispatch.cli import main
from smart_dispatch.telemetry import Telemetry, TelemetryHooks
from smart_dispatch.telemetry.audit import AuditLog
from smart_dispatch.telemetry.base import DecisionMade, RpcFinished
from smart_dispatch.telemetry.redact import hash_user, mask_address, mask_value

from tests.e2e.decide_builders import decide_request
from tests.telemetry.conftest import ADDRESSES, EMAIL, INBOX, LOG_KEY, PHONE, USER

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = (("traceparent", f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"),)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_every_decision_is_a_json_line_with_personal_data_masked(stub, audit_path):
    # Given a sent promo and a second one refused by its cap
    first = decide_request("promo", user=USER, addresses=ADDRESSES)
    second = decide_request("promo", user=USER, addresses=ADDRESSES)
    sent = await stub.Decide(first, metadata=TRACEPARENT)
    await stub.Decide(second)

    # Then the log holds one line per decision
    sent_line, capped_line = records(audit_path)
    assert sent_line["decision_id"] == sent.decision_id
    assert sent_line["message_id"] == first.message.id
    assert sent_line["category"] == "promo"
    assert sent_line["ruleset_version"] == sent.ruleset_version
    assert sent_line["verdict"] == "send"
    assert sent_line["fired_rules"] == ["promo_by_email"]
    assert sent_line["reasons"] == [{"code": "channel_selected", "rule": "promo_by_email", "detail": "email"}]
    assert [(c["name"], c["used"], c["remaining"]) for c in sent_line["caps"]] == [("promo_hourly", 1, 0)]
    assert [(s["channel"], s["address"]) for s in sent_line["plan"]] == [
        ("email", "a***@example.com"),
        ("sms", "+1****00"),
    ]
    assert sent_line["trace_id"] == CALLER_TRACE
    # the user is a keyed pseudonym: stable under the key, not the bare hash anyone can compute
    assert sent_line["user"] == hash_user(USER, LOG_KEY.encode())
    assert sent_line["user"] != hash_user(USER, b"another key")
    assert hashlib.sha256(USER.encode()).hexdigest()[:16] not in sent_line["user"]
    assert capped_line["verdict"] == "suppress"
    assert capped_line["plan"] == []
    assert "cap_exceeded" in [r["code"] for r in capped_line["reasons"]]

    # And no address or user id is written in clear
    text = audit_path.read_text()
    for secret in (PHONE, EMAIL, INBOX, USER):
        assert secret not in text


async def test_get_decision_answers_why_for_a_message_id(stub):
    request = decide_request("promo", user=USER, addresses=ADDRESSES)
    decided = await stub.Decide(request, metadata=TRACEPARENT)

    found = await stub.GetDecision(pb.GetDecisionRequest(message_id=request.message.id))

    assert found.message_id == request.message.id
    assert found.category == "promo"
    assert found.trace_id == CALLER_TRACE
    assert not found.dry_run
    assert found.HasField("decided_at")
    assert found.decision.decision_id == decided.decision_id
    assert found.decision.verdict == pb.VERDICT_SEND
    assert list(found.decision.matched_rules) == ["promo_by_email"]
    assert [(s.channel, s.address) for s in found.decision.steps] == [
        ("email", "a***@example.com"),
        ("sms", "+1****00"),
    ]
    assert [c.name for c in found.decision.caps] == ["promo_hourly"]


async def test_get_decision_of_a_dispatch_and_of_unknown_messages(stub):
    decide = decide_request("otp", user=USER, addresses=ADDRESSES)
    accepted = await stub.Dispatch(pb.DispatchRequest(message=decide.message, recipient=decide.recipient))

    found = await stub.GetDecision(pb.GetDecisionRequest(message_id=decide.message.id))
    assert found.decision.decision_id == accepted.decision.decision_id

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.GetDecision(pb.GetDecisionRequest(message_id="never-seen"))
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetDecision(pb.GetDecisionRequest())
    assert missing.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "message_id" in (missing.value.details() or "")


async def test_why_prints_the_latest_decision_from_the_log(stub, audit_path, capsys):
    request = decide_request("promo", user=USER, addresses=ADDRESSES)
    await stub.Decide(pb.DecideRequest(message=request.message, recipient=request.recipient, dry_run=True))
    decided = await stub.Decide(request)

    assert main(["why", request.message.id, "--log", str(audit_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"message {request.message.id} (promo): SEND\n")
    assert f"decision {decided.decision_id}" in out
    assert "fired rules: promo_by_email" in out
    assert "1. email a***@example.com at " in out
    assert "- channel_selected [promo_by_email]: email" in out
    assert "- promo_hourly: 1/1 used in 3600s, 0 left" in out
    assert PHONE not in out and EMAIL not in out

    assert main(["why", request.message.id, "--log", str(audit_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decision_id"] == decided.decision_id

    assert main(["why", "never-seen", "--log", str(audit_path)]) == 1
    assert "no decision for message 'never-seen'" in capsys.readouterr().err


class Exploding(TelemetryHooks):
    def on_decision(self, event: DecisionMade) -> None:
        raise RuntimeError("hook down")

    def on_rpc(self, event: RpcFinished) -> None:
        raise RuntimeError("hook down")


class BrokenSink:
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        pass


async def test_a_failing_hook_or_audit_sink_never_breaks_a_decision(settings, caplog):
    # Given a decision log whose disk is full and a hook that raises on every report
    telemetry = Telemetry(audit=AuditLog(BrokenSink()), hooks=[Exploding()])  # type: ignore[arg-type]
    async with App(settings, telemetry) as app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = pb_grpc.SmartDispatchServiceStub(ch)
        with caplog.at_level(logging.ERROR, logger="smart_dispatch.telemetry.base"):
            # When decisions are taken
            request = decide_request("otp", user=USER, addresses=ADDRESSES)
            response = await stub.Decide(request)

    # Then they are answered all the same, and the failures are logged
    assert response.verdict == pb.VERDICT_SEND
    failures = [r for r in caplog.records if r.name == "smart_dispatch.telemetry.base"]
    assert any("on_decision" in r.getMessage() and "AuditLog" in r.getMessage() for r in failures)
    assert any("Exploding.on_rpc" in r.getMessage() for r in failures)
    await telemetry.close()


async def test_a_sidecar_that_records_no_spans_still_logs_the_callers_trace(settings, audit_path):
    # Given the default telemetry: no trace exporter, no metrics, only the decision log
    telemetry = Telemetry(audit=AuditLog.to_target(str(audit_path)))
    async with App(settings, telemetry) as app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = pb_grpc.SmartDispatchServiceStub(ch)
        # When one caller sends its traceparent and another does not
        traced = decide_request("otp", user=USER, addresses=ADDRESSES)
        untraced = decide_request("otp", user=USER, addresses=ADDRESSES)
        await stub.Decide(traced, metadata=TRACEPARENT)
        await stub.Decide(untraced)
        found = await stub.GetDecision(pb.GetDecisionRequest(message_id=traced.message.id))
    await telemetry.close()

    # Then the first decision is filed under the caller's trace, the second under none
    by_message = {line["message_id"]: line for line in records(audit_path)}
    assert by_message[traced.message.id]["trace_id"] == CALLER_TRACE
    assert by_message[untraced.message.id]["trace_id"] == ""
    assert found.trace_id == CALLER_TRACE
    assert found.decision.steps[0].address == mask_address("sms", PHONE)


@pytest.mark.parametrize(
    ("channel", "address", "masked"),
    [
        ("sms", "+15551234100", "+1****00"),
        ("sms", "+4930123", "****23"),
        ("email", "a@" + "x" * 5000, "a***@" + "x" * 75),
        ("sms", "12345", "****"),
        ("email", "ada@example.com", "a***@example.com"),
        ("email", "@example.com", "@example.com"),
        (
            "webhook",
            "https://user:pw@hooks.example.com:8443/t/secret?x=1",
            "https://hooks.example.com:8443/****",
        ),
        ("webhook", "not a url", "****"),
        ("push", "fcm-token-abcdef123456", "fc****56"),
        ("in_app", "inbox-1", "****"),
        ("wechat", "oAbCdEfGhIjKlMnOp", "oA****Op"),
    ],
)
def test_addresses_are_masked_per_channel(channel: str, address: str, masked: str):
    assert mask_address(channel, address) == masked


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("+15551234100", "+1****00"),
        ("0151 2345 678", "01****78"),
        ("１５５５１２３４１００", "１５****００"),  # full-width digits, as some keyboards type them
        ("ada@example.com", "a***@example.com"),
        ("pro", "pro"),
        ("order 1234567 shipped", "order 1234567 shipped"),
        (42, 42),
    ],
)
def test_profile_values_that_look_like_phone_numbers_or_addresses_are_masked(value: object, kept: object):
    assert mask_value(value) == kept
