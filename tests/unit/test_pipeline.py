"""The decision pipeline on a fixed clock: exact instants for caps, quiet hours and policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from smart_dispatch.behaviour.memory import MemoryBehaviourStore
from smart_dispatch.counters.memory import MemoryCounterStore
from smart_dispatch.decide.pipeline import Decider
from smart_dispatch.domain import DecideRequest, Message, Recipient, Verdict
from smart_dispatch.lists.memory import MemoryListStore
from smart_dispatch.rules.active import ActiveRules
from smart_dispatch.user_state import UserStateReader

SHIPPED = Path(__file__).resolve().parents[2] / "rules"
BERLIN = "Europe/Berlin"


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def seconds(self) -> float:
        return self.now.timestamp()


def decider_for(rules_dir: Path, clock: FixedClock) -> Decider:
    rules = ActiveRules(rules_dir)
    rules.load()
    reader = UserStateReader(MemoryListStore(), MemoryBehaviourStore())
    return Decider(rules, MemoryCounterStore(clock.seconds), reader, clock=clock)


def marketing(message_id: str, *, user: str = "u1", not_after: datetime | None = None) -> DecideRequest:
    return DecideRequest(
        Message(id=message_id, category="marketing", not_after=not_after),
        Recipient(user_id=user, timezone=BERLIN, addresses={"sms": "+4915550100", "email": "a@example.com"}),
    )


async def test_cap_deferral_that_lands_in_quiet_hours_moves_to_the_morning():
    # Given 20:30 in Berlin (19:30 UTC) and the shipped 1/hour cap and 21:00-08:00 quiet hours
    clock = FixedClock(datetime(2026, 6, 1, 18, 30, tzinfo=UTC))
    decider = decider_for(SHIPPED, clock)
    first = await decider.decide(marketing("m1"))
    # When a 2nd message would be allowed again at 21:30 local, inside quiet hours
    second = await decider.decide(marketing("m2"))
    third = await decider.decide(marketing("m3"))

    assert first.verdict is Verdict.SEND and first.send_at == clock.now
    # Then it goes at 08:00 local (06:00 UTC in summer), and the 3rd an hour later
    assert second.verdict is Verdict.DEFER
    assert second.send_at == datetime(2026, 6, 2, 6, 0, tzinfo=UTC)
    assert third.send_at == datetime(2026, 6, 2, 7, 0, tzinfo=UTC)
    learning = {"learned_choice", "send_time"}  # the shipped rules learn; not this test's point
    assert [r.code for r in second.reasons if r.code not in learning] == [
        "channel_selected",
        "cap_exceeded",
        "deferred_by_cap",
        "quiet_hours",
    ]


async def test_message_during_quiet_hours_is_deferred_to_the_local_opening_instant():
    clock = FixedClock(datetime(2026, 1, 15, 23, 10, tzinfo=UTC))  # 00:10 in Berlin (winter, UTC+1)
    decision = await decider_for(SHIPPED, clock).decide(marketing("m1"))

    assert decision.verdict is Verdict.DEFER
    assert decision.send_at == datetime(2026, 1, 16, 7, 0, tzinfo=UTC)
    assert all(step.send_at == decision.send_at for step in decision.steps)


async def test_rolling_window_not_calendar_day():
    # Three sends at 09:00, 10:00, 11:00 local fill the 3-per-24h cap; the 4th waits for 09:00
    # the NEXT day, not for midnight.
    clock = FixedClock(datetime(2026, 6, 1, 7, 0, tzinfo=UTC))
    decider = decider_for(SHIPPED, clock)
    sent = []
    for i in range(3):
        sent.append(await decider.decide(marketing(f"m{i}")))
        clock.now += timedelta(hours=1)
    fourth = await decider.decide(marketing("m4"))

    assert [d.verdict for d in sent] == [Verdict.SEND] * 3
    assert fourth.send_at == datetime(2026, 6, 2, 7, 0, tzinfo=UTC)
    daily = next(c for c in fourth.caps if c.name == "marketing_daily")
    # at its planned instant the window (day 1 07:00, day 2 07:00] holds 08:00, 09:00 and itself
    assert (daily.used, daily.remaining) == (3, 0)


def _rules(tmp_path: Path, on_cap: str) -> Path:
    (tmp_path / "r.yaml").write_text(
        f"""
categories: [promo]
caps:
  - {{name: sms_hourly, limit: 1, window: 1h, channel: sms}}
rules:
  - name: promo_sms_first
    when: {{category: promo}}
    then: {{prefer: [sms, email], caps: [sms_hourly], on_cap: {on_cap}}}
"""
    )
    return tmp_path


def promo(message_id: str) -> DecideRequest:
    return DecideRequest(
        Message(id=message_id, category="promo"),
        Recipient(user_id="u1", addresses={"sms": "+15550100", "email": "a@example.com"}),
    )


async def test_on_cap_next_channel_falls_through_to_an_uncapped_channel(tmp_path):
    clock = FixedClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    decider = decider_for(_rules(tmp_path, "next_channel"), clock)
    first = await decider.decide(promo("p1"))
    second = await decider.decide(promo("p2"))

    assert (first.verdict, first.steps[0].channel) == (Verdict.SEND, "sms")
    assert (second.verdict, second.steps[0].channel) == (Verdict.SEND, "email")
    assert "cap_exceeded" in [r.code for r in second.reasons]


async def test_on_cap_next_channel_defers_to_the_channel_that_frees_up_first(tmp_path):
    # Given an hourly cap on each channel, sms used at 12:00 and e-mail at 12:20
    (tmp_path / "r.yaml").write_text(
        """
categories: [promo]
caps:
  - {name: sms_hourly, limit: 1, window: 1h, channel: sms}
  - {name: email_hourly, limit: 1, window: 1h, channel: email}
rules:
  - name: promo_any_channel
    when: {category: promo}
    then: {prefer: [sms, email], caps: [sms_hourly, email_hourly], on_cap: next_channel}
"""
    )
    clock = FixedClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    decider = decider_for(tmp_path, clock)
    assert (await decider.decide(promo("p1"))).steps[0].channel == "sms"
    clock.now += timedelta(minutes=20)
    assert (await decider.decide(promo("p2"))).steps[0].channel == "email"

    # When a third comes at 12:30, every channel full
    clock.now += timedelta(minutes=10)
    third = await decider.decide(promo("p3"))
    late = DecideRequest(
        Message(id="p4", category="promo", not_after=clock.now + timedelta(minutes=20)), promo("p4").recipient
    )
    hurried = await decider.decide(late)

    # Then it waits for sms, free first (13:00), not for e-mail (13:20); and a message that
    # must go before 12:50 is suppressed, as nothing frees up in time
    assert (third.verdict, third.steps[0].channel) == (Verdict.DEFER, "sms")
    assert third.send_at == datetime(2026, 6, 1, 13, 0, tzinfo=UTC)
    assert [r.code for r in third.reasons][-2:] == ["cap_exceeded", "deferred_by_cap"]
    assert hurried.verdict is Verdict.SUPPRESS
    # and the deferral holds sms at 13:00: another message then waits for e-mail at 13:20
    fifth = await decider.decide(promo("p5"))
    assert (fifth.steps[0].channel, fifth.send_at) == ("email", datetime(2026, 6, 1, 13, 20, tzinfo=UTC))


@pytest.mark.parametrize("on_cap", ["drop"])
async def test_on_cap_drop_suppresses(tmp_path, on_cap):
    clock = FixedClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    decider = decider_for(_rules(tmp_path, on_cap), clock)
    await decider.decide(promo("p1"))
    second = await decider.decide(promo("p2"))

    assert second.verdict is Verdict.SUPPRESS
    cap_reason = next(r for r in second.reasons if r.code == "cap_exceeded")
    assert cap_reason.rule == "promo_sms_first" and "sms_hourly" in cap_reason.detail


async def test_the_embedded_counter_store_forgets_users_whose_windows_passed():
    from smart_dispatch.counters.base import CapSpec, ReserveRequest
    from smart_dispatch.counters.memory import SWEEP_EVERY

    clock = FixedClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    store = MemoryCounterStore(clock.seconds)
    hourly = CapSpec("hourly", 1, 3600.0)
    for i in range(SWEEP_EVERY - 1):
        await store.reserve(ReserveRequest(f"user-{i}", f"m{i}", ((hourly,),)))
    clock.now += timedelta(hours=2)
    await store.reserve(ReserveRequest("late-user", "m-late", ((hourly,),)))  # triggers the sweep

    assert list(store._entries) == [("late-user", "hourly")]


async def test_the_lane_comes_from_a_rule_else_from_the_category(tmp_path):
    (tmp_path / "r.yaml").write_text(
        """
categories: [otp, newsletter, marketing]
rules:
  - {name: codes, when: {category: otp}, then: {prefer: [sms]}}
  - {name: digest, when: {category: newsletter}, then: {prefer: [email], lane: bulk}}
  - {name: promo, when: {category: marketing}, then: {prefer: [email], lane: high}}
"""
    )
    decider = decider_for(tmp_path, FixedClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC)))

    async def lane(category: str) -> str:
        request = DecideRequest(
            Message(id=f"l-{category}", category=category),
            Recipient(user_id="u1", addresses={"sms": "+15550100", "email": "a@example.com"}),
        )
        return (await decider.decide(request)).lane

    assert [await lane(c) for c in ("otp", "newsletter", "marketing")] == ["critical", "bulk", "high"]
