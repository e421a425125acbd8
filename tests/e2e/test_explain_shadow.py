"""Explain ("why did this user get SMS at 08:00?") and shadow rules / shadow mode."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from decide_builders import active_since, codes, decide_request, zone_with_local_hour
from google.protobuf import json_format
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

SHIPPED = Path(__file__).resolve().parents[2] / "rules" / "default.yaml"


async def test_explain_shows_facts_every_rule_the_effects_in_order_and_caps(stub):
    request = decide_request(
        user="u-why", timezone=zone_with_local_hour(2), attributes={"last_active_at": active_since(9)}
    )
    request.explain = True
    response = await stub.Decide(request)
    explanation = response.explanation
    facts = json_format.MessageToDict(explanation.facts)

    assert response.verdict == pb.VERDICT_DEFER
    assert facts["category"] == "marketing"
    assert facts["user"]["local_hour"] == 2 and facts["user"]["days_since_active"] >= 9
    assert facts["reachable"] == {
        "sms": True,
        "email": True,
        "in_app": True,
        "wechat": False,
        "push": False,
        "webhook": False,
    }
    rules = {r.name: r for r in explanation.rules}
    assert len(rules) == 7
    assert [n for n, r in rules.items() if r.matched] == [
        "marketing_inactive_sms",
        "marketing_learned",
        "marketing_caps_and_quiet_hours",
    ]
    otp_line = SHIPPED.read_text().splitlines().index("  - name: otp_sms_now") + 1
    assert rules["otp_sms_now"].location == f"{SHIPPED}:{otp_line}"
    assert [(e.rule, e.effect) for e in explanation.effects] == [
        ("marketing_inactive_sms", "prefer"),
        ("marketing_learned", "prefer"),
        ("marketing_learned", "choose"),
        ("marketing_learned", "send_time"),
        ("marketing_caps_and_quiet_hours", "caps"),
        ("marketing_caps_and_quiet_hours", "on_cap"),
        ("marketing_caps_and_quiet_hours", "quiet_hours"),
    ]
    assert explanation.effects[6].value == "21:00-08:00 policy=defer"
    assert explanation.ranked_channels[0] == "sms"
    assert {c.name for c in response.caps} == {"marketing_hourly", "marketing_daily"}


async def test_without_explain_the_response_carries_no_explanation(stub):
    response = await stub.Decide(decide_request("otp"))

    assert not response.HasField("explanation")


@pytest.fixture
def trial_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(SHIPPED, rules / "default.yaml")
    (rules / "trial.yaml").write_text(
        "rules:\n"
        "  - name: trial_no_sms_for_marketing\n"
        "    shadow: true\n"
        "    priority: 5\n"
        "    when: {category: marketing}\n"
        "    then: {suppress: trying out a marketing freeze}\n"
    )
    return rules


async def test_a_shadow_rule_is_reported_and_logged_but_not_enforced(make_app, trial_rules, caplog):
    caplog.set_level("INFO", logger="smart_dispatch.decide.pipeline")
    async with (
        make_app(rules_dir=trial_rules) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        response = await pb_grpc.SmartDispatchServiceStub(channel).Decide(decide_request(user="u-shadow"))

    assert response.verdict == pb.VERDICT_SEND
    assert "trial_no_sms_for_marketing" in response.matched_rules
    shadow = {r.code: r for r in response.reasons if r.code.startswith("shadow:")}
    assert shadow["shadow:verdict"].detail == "would SUPPRESS"
    assert shadow["shadow:suppressed_by_rule"].rule == "trial_no_sms_for_marketing"
    assert "shadow decision message=" in caplog.text and "would SUPPRESS" in caplog.text


async def test_shadow_mode_counts_caps_apart_and_enforces_nothing(make_app):
    async with (
        make_app(shadow=True) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        night = zone_with_local_hour(2)
        first = await stub.Decide(decide_request(user="u-sh", timezone=night))
        second = await stub.Decide(decide_request(user="u-sh", timezone=night))

    # Nothing enforced: both go now, uncapped, although it is night and over the hourly cap
    assert first.verdict == second.verdict == pb.VERDICT_SEND
    assert not first.caps
    # ...but what the rules would have done is reported, with caps counted under shadow names
    assert "shadow:quiet_hours" in codes(first)
    would = next(r for r in second.reasons if r.code == "shadow:verdict")
    assert would.detail.startswith("would DEFER via ")  # the shipped rules learn which channel
    exceeded = next(r for r in second.reasons if r.code == "shadow:cap_exceeded")
    assert "shadow:marketing_hourly" in exceeded.detail
