"""The `send_time` effect over gRPC, on the request clock: the hour a person opens at, within
the window, outside quiet hours, across midnight; the population curve for a newcomer."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.config import Settings

RULES = """
categories: [promo, night, plain]
learning: {prior_weight: 2}
rules:
  - name: promo_when_read
    when: {category: promo}
    then:
      prefer: [email]
      send_time: {by: engagement, within: 24h, min_events: 3, explore: none}
      quiet_hours: {from: "21:00", to: "08:00", policy: defer}
  - name: night_owls
    when: {category: night}
    then:
      prefer: [email]
      send_time: {by: engagement, within: 24h, min_events: 3, explore: none}
  - name: plain_now
    when: {category: plain}
    then: {prefer: [email]}
"""
MONDAY = datetime(2026, 3, 2, tzinfo=UTC)
_ids = itertools.count()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "rules.yaml").write_text(RULES)
    return Settings(
        port=0, rules_dir=tmp_path, watch_rules=False, allow_request_clock=True, learning_prior_refresh_s=0.0
    )


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def request(user: str, at: datetime, category: str = "promo", **extra: object) -> pb.DecideRequest:
    return pb.DecideRequest(
        message=pb.Message(id=f"{user}-{next(_ids)}", category=category),
        recipient=pb.Recipient(user_id=user, timezone="UTC", addresses={"email": "a@example.com"}),
        at=stamp(at),
        **extra,  # type: ignore[arg-type]
    )


async def history(stub, user: str, hours: dict[int, bool], days: int = 4) -> None:
    """Messages sent to `user` at each hour of `hours` on the `days` weekdays before Monday,
    opened five minutes later when the hour maps to True."""
    for day in range(1, days + 1):
        for hour, opens in hours.items():
            at = MONDAY - timedelta(days=7) + timedelta(days=day, hours=hour)  # Tue..Fri before
            sent = request(user, at, "plain")
            assert (await stub.Decide(sent)).verdict == pb.VERDICT_SEND
            if opens:
                event = pb.ReportEventRequest(
                    user_id=user,
                    message_id=sent.message.id,
                    channel="email",
                    kind=pb.EVENT_KIND_OPENED,
                    occurred_at=stamp(at + timedelta(minutes=5)),
                )
                await stub.ReportEvent(event)


async def test_a_person_gets_messages_at_the_hour_they_open_them(stub):
    await history(stub, "eve", {10: False, 19: True})
    decided = await stub.Decide(request("eve", MONDAY.replace(hour=9), explain=True))
    assert decided.verdict == pb.VERDICT_DEFER
    assert decided.send_at.ToDatetime(tzinfo=UTC) == MONDAY.replace(hour=19)
    reason = next(r for r in decided.reasons if r.code == "send_time")
    assert reason.rule == "promo_when_read" and reason.detail.startswith("wd19 at 2026-03-02T19:00:00")
    assert decided.explanation.learned_send_time[0].startswith("wd19")


async def test_the_best_hour_after_midnight_is_found_across_it(stub):
    await history(stub, "owl", {0: False, 1: True, 2: False, 22: False, 23: False})
    decided = await stub.Decide(request("owl", MONDAY.replace(hour=22), "night"))
    assert decided.send_at.ToDatetime(tzinfo=UTC) == MONDAY + timedelta(days=1, hours=1)


async def test_quiet_hours_are_never_chosen_even_when_the_person_reads_then(stub):
    await history(stub, "late", {23: True, 12: False})
    decided = await stub.Decide(request("late", MONDAY.replace(hour=9)))
    send_at = (
        decided.send_at.ToDatetime(tzinfo=UTC) if decided.HasField("send_at") else MONDAY.replace(hour=9)
    )
    assert 8 <= send_at.hour < 21


async def newcomer_after(stub, crowd: int) -> pb.DecideResponse:
    """A newcomer's promo at 08:00 after `crowd` people were sent 8 messages each (opened at
    14:00, ignored at 09:00), once the population prior has caught up."""
    for n in range(crowd):
        await history(stub, f"crowd-{n}", {14: True, 9: False}, days=4)
    await stub.Decide(request("newcomer", MONDAY.replace(hour=8), dry_run=True))  # refreshes the prior
    await asyncio.sleep(0.2)
    return await stub.Decide(request("newcomer", MONDAY.replace(hour=8), dry_run=True))


async def test_a_newcomer_gets_the_populations_best_hour(stub):
    decided = await newcomer_after(stub, crowd=7)  # 56 sends: more than the curve's weight (50)
    assert decided.send_at.ToDatetime(tzinfo=UTC) == MONDAY.replace(hour=14)


async def test_a_handful_of_sends_does_not_move_a_newcomer_off_sending_at_once(stub):
    decided = await newcomer_after(stub, crowd=2)  # 16 sends: too few to say anything about hours
    assert decided.verdict == pb.VERDICT_SEND
    assert decided.send_at.ToDatetime(tzinfo=UTC) == MONDAY.replace(hour=8)
