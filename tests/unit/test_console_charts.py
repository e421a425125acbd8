"""The console's pure parts: chart numbers from GetStats rows, the one-line "why", and the
engagement summary of the model's counts."""

from __future__ import annotations

from datetime import UTC, datetime

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.behaviour.base import Behaviour, Decayed
from smart_dispatch.behaviour.summary import summarize
from smart_dispatch.console.charts import funnels, queue_bars
from smart_dispatch.console.views import why


def test_funnels_sum_rows_per_channel_on_one_scale_and_compare_each_stage_with_the_one_before():
    stats = pb.GetStatsResponse(
        rows=[
            pb.StatsRow(day="2026-12-01", channel="sms", decided=10, sent=8, delivered=8, opened=4, cost=0.4),
            pb.StatsRow(
                day="2026-12-02", channel="sms", decided=10, sent=10, delivered=8, opened=2, cost=0.5
            ),
            pb.StatsRow(day="2026-12-02", channel="email", decided=40, sent=40, opened=10, clicked=5),
            pb.StatsRow(day="2026-12-02", channel="", decided=3),  # suppressed: no channel
        ]
    )

    email, sms = funnels(stats)

    assert (email.channel, sms.channel) == ("email", "sms")  # most decisions first
    assert [(b.label, b.value) for b in sms.bars] == [
        ("decided", 20),
        ("sent", 18),
        ("delivered", 16),
        ("opened", 6),
        ("clicked", 0),
        ("converted", 0),
    ]
    assert sms.bars[0].share == 0.5 and email.bars[0].share == 1.0  # one scale: email's 40
    assert sms.bars[2].note == "89% of sent" and sms.bars[5].note == "0% of opened"
    assert email.bars[3].note == "25% of sent"  # no delivery receipts: opens against sends
    assert sms.cost == 0.9 and sms.cost_per_open == 0.15


def test_queue_bars_put_lanes_most_urgent_first_then_scheduled():
    bars = queue_bars({"bulk": 4, "critical": 1, "scheduled": 2, "dead_letters": 9})
    assert [(b.label, b.value, b.share) for b in bars] == [
        ("critical", 1, 0.25),
        ("high", 0, 0.0),
        ("normal", 0, 0.0),
        ("bulk", 4, 1.0),
        ("scheduled", 2, 0.5),
    ]


def test_why_names_the_verdict_the_channel_and_the_deciding_reason():
    sent = pb.DecideResponse(verdict=pb.VERDICT_SEND, steps=[pb.PlanStep(channel="sms")])
    sent.reasons.add(code="channel_selected", rule="otp_sms_now", detail="sms")
    deferred = pb.DecideResponse(verdict=pb.VERDICT_DEFER, steps=[pb.PlanStep(channel="email")])
    deferred.send_at.FromDatetime(datetime(2026, 12, 3, 8, 0, tzinfo=UTC))
    deferred.reasons.add(code="channel_selected", rule="digest", detail="email")
    deferred.reasons.add(code="quiet_hours", rule="night", detail="21:00-08:00")
    suppressed = pb.DecideResponse(verdict=pb.VERDICT_SUPPRESS)
    suppressed.reasons.add(code="deny_listed")

    assert why(sent) == "Sent by sms (rule otp_sms_now)"
    assert why(deferred) == "Deferred until 2026-12-03 08:00:00 UTC, then by email: quiet_hours (rule night)"
    assert why(suppressed) == "Not sent: deny_listed"


def test_the_engagement_summary_decays_counts_and_splits_them_by_channel_and_hour():
    now = 1_800_000_000.0
    day = 86400.0
    behaviour = Behaviour(
        counts={
            "sms:sent": Decayed(4.0, now),
            "sms:opened": Decayed(2.0, now - 30 * day),  # one half-life ago: counts half
            "email:sent": Decayed(1.0, now),
            "slot:wd07:sent": Decayed(3.0, now),
            "slot:wd07:opened": Decayed(1.0, now),
            "slot:we21:sent": Decayed(1.0, now),
            "active:u13": Decayed(5.0, now),
            "slot:bogus": Decayed(9.0, now),
        }
    )

    summary = summarize(behaviour, now, 30 * day)

    assert list(summary.channels) == ["email", "sms"]  # not "slot" nor "active"
    assert summary.channels["sms"].sent == 4.0 and summary.channels["sms"].opened == 1.0
    assert (summary.weekday_hours[7].sent, summary.weekday_hours[7].opened) == (3.0, 1.0)
    assert summary.weekday_hours[7].open_rate == 1 / 3 and summary.weekday_hours[8].open_rate is None
    assert summary.weekend_hours[21].sent == 1.0
    assert summary.active_utc_hours[13] == 5.0 and sum(summary.active_utc_hours) == 5.0
    assert summarize(Behaviour(), now, day).empty
