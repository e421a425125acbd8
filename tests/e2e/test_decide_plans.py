"""Decide over a real gRPC channel with the shipped rules: the plans a caller sees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from decide_builders import active_since, at, codes, decide_request, zone_with_local_hour
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb


async def test_otp_goes_by_sms_now_with_email_fallback(stub):
    response = await stub.Decide(decide_request("otp"))

    assert response.verdict == pb.VERDICT_SEND
    assert [(s.channel, s.address) for s in response.steps] == [
        ("sms", "+15550100"),
        ("email", "ada@example.com"),
    ]
    assert list(response.matched_rules) == ["otp_sms_now"]
    assert abs((at(response.send_at) - datetime.now(UTC)).total_seconds()) < 5
    assert response.ruleset_version and response.decision_id


async def test_otp_without_phone_goes_by_email(stub):
    response = await stub.Decide(decide_request("otp", addresses={"email": "ada@example.com"}))

    assert response.verdict == pb.VERDICT_SEND
    assert [s.channel for s in response.steps] == ["email"]


async def test_otp_is_never_capped_nor_held_back_at_night(stub):
    # Given a recipient for whom it is 02:00, deep inside the marketing quiet hours
    night = zone_with_local_hour(2)
    # When ten login codes are requested in a row
    responses = [await stub.Decide(decide_request("otp", timezone=night)) for _ in range(10)]
    # Then every one goes out now, uncapped
    assert {r.verdict for r in responses} == {pb.VERDICT_SEND}
    assert all(not r.caps for r in responses)
    assert "caps_bypassed" not in codes(responses[0])  # otp has no caps to bypass in the shipped rules


async def test_recently_active_user_gets_marketing_in_app(stub):
    response = await stub.Decide(decide_request(attributes={"last_active_at": active_since(1)}))

    assert response.verdict == pb.VERDICT_SEND
    assert response.steps[0].channel == "in_app"
    assert "marketing_active_in_app" in response.matched_rules
    assert "marketing_inactive_sms" not in response.matched_rules


async def test_inactive_or_unknown_activity_user_gets_marketing_by_sms(stub):
    inactive = await stub.Decide(
        decide_request(user="u-inactive", attributes={"last_active_at": active_since(10)})
    )
    unknown = await stub.Decide(decide_request(user="u-unknown"))

    for response in (inactive, unknown):
        assert response.verdict == pb.VERDICT_SEND
        assert response.steps[0].channel == "sms"
        assert "marketing_inactive_sms" in response.matched_rules


async def test_opted_out_channel_is_never_used(stub):
    response = await stub.Decide(
        decide_request(attributes={"last_active_at": active_since(10)}, opted_out=("sms",))
    )

    assert response.verdict == pb.VERDICT_SEND
    assert "sms" not in [s.channel for s in response.steps]


async def test_nothing_reachable_is_suppressed(stub):
    # Only SMS is known, and the person opted out of it
    response = await stub.Decide(decide_request("otp", addresses={"sms": "+15550100"}, opted_out=("sms",)))

    assert response.verdict == pb.VERDICT_SUPPRESS
    assert codes(response) == ["no_reachable_channel"]
    assert not response.steps


async def test_message_channels_restrict_candidates(stub):
    response = await stub.Decide(decide_request("otp", channels=("email",)))

    assert [s.channel for s in response.steps] == ["email"]


async def test_second_marketing_message_within_the_hour_waits_for_the_first_to_leave_the_window(stub):
    first = await stub.Decide(decide_request(user="u-hourly"))
    second = await stub.Decide(decide_request(user="u-hourly"))

    assert first.verdict == pb.VERDICT_SEND
    hourly = next(c for c in first.caps if c.name == "marketing_hourly")
    assert (hourly.limit, hourly.used, hourly.remaining) == (1, 1, 0)
    assert at(hourly.reset_at) == at(first.send_at) + timedelta(hours=1)

    assert second.verdict == pb.VERDICT_DEFER
    assert at(second.send_at) == at(first.send_at) + timedelta(hours=1)
    assert at(second.steps[0].send_at) == at(second.send_at)
    assert "cap_exceeded" in codes(second) and "deferred_by_cap" in codes(second)


async def test_fourth_marketing_message_of_the_day_waits_for_the_first_to_leave_the_day(stub):
    responses = [await stub.Decide(decide_request(user="u-daily")) for _ in range(4)]
    first = at(responses[0].send_at)

    assert [r.verdict for r in responses] == [pb.VERDICT_SEND] + [pb.VERDICT_DEFER] * 3
    assert [at(r.send_at) - first for r in responses[:3]] == [timedelta(hours=h) for h in (0, 1, 2)]
    assert at(responses[3].send_at) == first + timedelta(hours=24)
    daily = next(c for c in responses[3].caps if c.name == "marketing_daily")
    assert daily.limit == 3 and daily.window.seconds == 86400


async def test_repeating_a_message_id_consumes_once(stub):
    first = await stub.Decide(decide_request(user="u-repeat", message_id="promo-42"))
    again = await stub.Decide(decide_request(user="u-repeat", message_id="promo-42"))
    other = await stub.Decide(decide_request(user="u-repeat", message_id="promo-43"))

    assert first.verdict == again.verdict == pb.VERDICT_SEND
    assert at(again.send_at) == at(first.send_at)
    assert "duplicate" in codes(again)
    assert {c.name: c.used for c in again.caps} == {"marketing_hourly": 1, "marketing_daily": 1}
    # only one slot was consumed: the next message is deferred by exactly one hour, not two
    assert other.verdict == pb.VERDICT_DEFER
    assert at(other.send_at) == at(first.send_at) + timedelta(hours=1)


async def test_dry_run_consumes_nothing(stub):
    previews = [await stub.Decide(decide_request(user="u-dry", dry_run=True)) for _ in range(3)]
    real = await stub.Decide(decide_request(user="u-dry"))
    preview_after = await stub.Decide(decide_request(user="u-dry", dry_run=True))
    real_after = await stub.Decide(decide_request(user="u-dry"))

    assert {p.verdict for p in previews} == {pb.VERDICT_SEND}
    assert all(c.used == 0 for p in previews for c in p.caps)
    assert real.verdict == pb.VERDICT_SEND
    assert preview_after.verdict == pb.VERDICT_DEFER
    # the preview did not take the 2nd slot: the real 2nd message gets the same instant
    assert at(real_after.send_at) == at(preview_after.send_at)


async def test_marketing_at_night_waits_for_eight_in_the_morning_local_time(stub):
    zone = zone_with_local_hour(2)
    response = await stub.Decide(decide_request(user="u-night", timezone=zone))

    assert response.verdict == pb.VERDICT_DEFER
    from zoneinfo import ZoneInfo

    local = at(response.send_at).astimezone(ZoneInfo(zone))
    assert (local.hour, local.minute, local.second) == (8, 0, 0)
    assert timedelta(hours=5) < at(response.send_at) - datetime.now(UTC) <= timedelta(hours=6)
    assert "quiet_hours" in codes(response)
    quiet = next(r for r in response.reasons if r.code == "quiet_hours")
    assert quiet.rule == "marketing_caps_and_quiet_hours"


async def test_deferral_past_the_deadline_is_suppressed_as_expired(stub):
    deadline = datetime.now(UTC) + timedelta(minutes=30)
    first = await stub.Decide(decide_request(user="u-deadline"))
    late = await stub.Decide(decide_request(user="u-deadline", not_after=deadline))

    assert first.verdict == pb.VERDICT_SEND
    assert late.verdict == pb.VERDICT_SUPPRESS
    assert "expired" in codes(late)
    assert not late.steps


async def test_quiet_hours_past_the_deadline_is_suppressed_without_consuming_a_slot(stub):
    night = zone_with_local_hour(2)
    soon = datetime.now(UTC) + timedelta(hours=1)
    expired = await stub.Decide(decide_request(user="u-night-deadline", timezone=night, not_after=soon))
    morning = await stub.Decide(decide_request(user="u-night-deadline", timezone=night))

    assert expired.verdict == pb.VERDICT_SUPPRESS and "expired" in codes(expired)
    # the suppressed message took no slot: the next one gets 08:00 itself, not 09:00
    assert morning.verdict == pb.VERDICT_DEFER
    assert {c.name: c.used for c in morning.caps} == {"marketing_hourly": 1, "marketing_daily": 1}
