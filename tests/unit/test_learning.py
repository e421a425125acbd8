"""The engagement model's pure parts: decayed counts, the channel posterior and objectives, and
the send-time candidates."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from smart_dispatch.behaviour.base import Behaviour, Decayed, Population, slot_of
from smart_dispatch.decide.learned import score_channels
from smart_dispatch.decide.send_time import best_send_time
from smart_dispatch.rules.model import Choose, Learning, SendTime

HL = 10 * 86400.0
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()


def test_decay_is_independent_of_the_order_events_arrive_in():
    times = [NOW - 5 * 86400, NOW - 86400, NOW - 20 * 86400, NOW]
    forward = Decayed()
    for t in times:
        forward = forward.add(1.0, t, HL)
    backward = Decayed()
    for t in reversed(times):
        backward = backward.add(1.0, t, HL)
    expected = sum(2 ** (-(NOW - t) / HL) for t in times)
    assert forward.at(NOW, HL) == pytest.approx(expected)
    assert backward.at(NOW, HL) == pytest.approx(expected)
    assert Decayed.decode(forward.encode()) == forward


def own(**counts: float) -> Behaviour:
    return Behaviour(None, {name.replace("__", ":"): Decayed(value, NOW) for name, value in counts.items()})


def test_value_objective_weighs_engagement_against_cost():
    # sms is read twice as often but costs 0.3 per message; a message is worth 1
    behaviour = own(sms__sent=100, sms__opened=40, email__sent=100, email__opened=20)
    learning = Learning(costs={"sms": 0.3, "email": 0.0})
    choose = Choose(objective="value", explore="none")
    scores = score_channels(
        ["sms", "email"], behaviour, Population(), "promo", learning, choose, NOW, random.Random(1)
    )
    assert [s.channel for s in scores] == ["email", "sms"]  # 0.2 - 0 beats 0.4 - 0.3
    valuable = Learning(costs={"sms": 0.3, "email": 0.0}, values={"promo": 5.0})
    scores = score_channels(
        ["sms", "email"], behaviour, Population(), "promo", valuable, choose, NOW, random.Random(1)
    )
    assert scores[0].channel == "sms"  # 2.0 - 0.3 beats 1.0


def test_cheapest_within_takes_the_cheapest_channel_close_enough_to_the_best():
    behaviour = own(
        sms__sent=100, sms__opened=40, email__sent=100, email__opened=37, push__sent=100, push__opened=10
    )
    learning = Learning(costs={"sms": 0.05, "email": 0.001, "push": 0.0})
    near = Choose(objective="cheapest_within", margin=0.9, explore="none")
    scores = score_channels(
        ["sms", "email", "push"], behaviour, Population(), "promo", learning, near, NOW, random.Random(1)
    )
    assert [s.channel for s in scores] == ["email", "sms", "push"]  # push is cheapest but far below
    strict = Choose(objective="cheapest_within", margin=0.99, explore="none")
    scores = score_channels(
        ["sms", "email", "push"], behaviour, Population(), "promo", learning, strict, NOW, random.Random(1)
    )
    assert scores[0].channel == "sms"


def test_thompson_sampling_tries_an_unknown_channel_sometimes_but_not_always():
    behaviour = own(email__sent=30, email__opened=9)
    choose = Choose(objective="value", explore="thompson")
    rng = random.Random(3)
    firsts = [
        score_channels(
            ["email", "push"], behaviour, Population(), "promo", Learning(costs={}), choose, NOW, rng
        )[0].channel
        for _ in range(400)
    ]
    assert 0.05 < firsts.count("push") / len(firsts) < 0.95


def test_send_time_candidates_skip_quiet_hours_respect_the_deadline_and_cross_dst():
    zone = ZoneInfo("Europe/Berlin")
    # the night clocks go forward in Berlin (2026-03-29, 02:00 -> 03:00)
    earliest = datetime(2026, 3, 28, 20, 30, tzinfo=zone).astimezone(UTC)
    spec = SendTime(within_s=12 * 3600, min_events=0, explore="none")

    def allowed(local: time) -> bool:
        return not (local.hour >= 22 or local.hour < 7)

    scores = best_send_time(earliest, zone, spec, {}, Population(), NOW, HL, random.Random(1), allowed)
    local = sorted(s.at.astimezone(zone) for s in scores)
    # 12 real hours from 20:30 CET end at 09:30 CEST: 22:00-06:59 skipped, 02:00 never existed
    assert [t.hour for t in local] == [20, 21, 7, 8, 9]
    assert all(t.minute == 0 for t in local[1:])
    deadline = earliest + timedelta(hours=1)
    scores = best_send_time(
        earliest, zone, spec, {}, Population(), NOW, HL, random.Random(1), allowed, deadline
    )
    assert [s.at.astimezone(zone).hour for s in sorted(scores, key=lambda s: s.at)] == [20, 21]


def test_send_time_follows_a_persons_own_open_rate_per_slot():
    zone = ZoneInfo("UTC")
    earliest = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    counts = {
        "slot:wd09:sent": Decayed(10, NOW), "slot:wd09:opened": Decayed(0, NOW),
        "slot:wd18:sent": Decayed(10, NOW), "slot:wd18:opened": Decayed(6, NOW),
    }  # fmt: skip
    spec = SendTime(within_s=86400, min_events=5, explore="none", prior_weight=5)
    scores = best_send_time(
        earliest, zone, spec, counts, Population(), NOW, HL, random.Random(1), lambda at: True
    )
    assert scores[0].slot == "wd18" and scores[0].at == earliest.replace(hour=18)
    assert slot_of(datetime(2026, 3, 7, 23, 0, tzinfo=UTC)) == "we23"


def test_a_persons_active_hours_move_the_send_time_before_any_open():
    # Given a person in Shanghai (UTC+8) seen in the app around 19:00 local (11:00 UTC) a dozen
    # times, never opened anything, and a population whose hours say nothing yet
    zone = ZoneInfo("Asia/Shanghai")
    earliest = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 09:00 local
    counts = {"active:u11": Decayed(10, NOW), "active:u10": Decayed(2, NOW)}
    spec = SendTime(within_s=86400, min_events=5, explore="none", prior_weight=50)

    scores = best_send_time(
        earliest, zone, spec, counts, Population(), NOW, HL, random.Random(1), lambda at: True
    )

    # Then the message goes at 19:00 local, and with no activity at all it would go at once
    assert scores[0].at.astimezone(zone).hour == 19
    idle = best_send_time(earliest, zone, spec, {}, Population(), NOW, HL, random.Random(1), lambda at: True)
    assert idle[0].at == earliest


def test_activity_is_kept_by_utc_hour_on_the_memory_store():
    import asyncio

    from smart_dispatch.behaviour.base import EngagementEvent
    from smart_dispatch.behaviour.memory import MemoryBehaviourStore

    store = MemoryBehaviourStore(lambda: NOW)
    at = datetime(2026, 3, 2, 11, 40, tzinfo=UTC).timestamp()
    for _ in range(3):
        asyncio.run(store.record(EngagementEvent("u", "active", None, at, "", 0.0), HL))
    behaviour = asyncio.run(store.get("u"))
    assert behaviour.counts["active:u11"].at(at, HL) == pytest.approx(3.0)
    assert behaviour.last_active_at == datetime.fromtimestamp(at, UTC)


def test_send_time_explores_hours_near_the_best_but_never_clearly_bad_ones():
    # Given a person whose opens say 18:00 is best, 17:00 and 19:00 nearly as good, 09:00 bad
    zone = ZoneInfo("UTC")
    earliest = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    counts = {
        "slot:wd09:sent": Decayed(20, NOW), "slot:wd09:opened": Decayed(0, NOW),
        "slot:wd18:sent": Decayed(20, NOW), "slot:wd18:opened": Decayed(12, NOW),
    }  # fmt: skip
    spec = SendTime(within_s=86400, min_events=5, explore="thompson", prior_weight=10)

    # When it is decided under many seeds
    chosen = [
        best_send_time(
            earliest, zone, spec, counts, Population(), NOW, HL, random.Random(seed), lambda at: True
        )[0].at.hour
        for seed in range(200)
    ]

    # Then 18:00 wins most often, its neighbours sometimes, and no hour far from it ever
    assert max(set(chosen), key=chosen.count) == 18
    assert set(chosen) - {18} and set(chosen) <= {16, 17, 18, 19, 20}


@pytest.mark.parametrize(
    "zone_name", ["Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns", "Pacific/Chatham", "UTC"]
)
def test_send_time_candidates_carry_the_zones_own_local_hour_and_kind_of_day(zone_name):
    from smart_dispatch.decide.send_time import _candidates

    zone = ZoneInfo(zone_name)
    for start in (datetime(2026, 3, 6, 17, 47, 13, 250, tzinfo=UTC), datetime(2026, 7, 4, 23, 5, tzinfo=UTC)):
        for at_s, local, slot in _candidates(start, zone, 3 * 86400, None):
            at = datetime.fromtimestamp(at_s, UTC)
            truth = at.astimezone(zone)
            assert (local, slot) == (truth.time(), slot_of(truth))
            assert at == start or (truth.minute, truth.second, truth.microsecond) == (0, 0, 0)


def test_the_prior_key_carries_the_segment_value_made_safe_and_only_when_asked():
    from smart_dispatch.decide.learned import prior_key

    assert prior_key("marketing", {"plan": "pro"}, "plan") == "marketing@pro"
    assert prior_key("marketing", {"plan": "a:b@c" + "x" * 40}, "plan") == "marketing@a_b_c" + "x" * 27
    assert prior_key("marketing", {"plan": "pro"}, "") == "marketing"
    assert prior_key("marketing", {}, "plan") == "marketing"
    assert prior_key("marketing", {"plan": {"nested": 1}}, "plan") == "marketing"


def test_a_segments_rate_leans_on_its_category_until_it_has_data_of_its_own():
    from smart_dispatch.decide.learned import SEGMENT_WEIGHT, prior_rate

    everyone = {"marketing:email:sent": Decayed(100, NOW), "marketing:email:opened": Decayed(10, NOW)}
    thin = Population(
        everyone
        | {"marketing@pro:email:sent": Decayed(2, NOW), "marketing@pro:email:opened": Decayed(2, NOW)}
    )
    thick = Population(
        everyone
        | {"marketing@pro:email:sent": Decayed(200, NOW), "marketing@pro:email:opened": Decayed(100, NOW)}
    )
    base = prior_rate(thin, "marketing", "email", NOW, HL)
    assert prior_rate(thin, "marketing@pro", "email", NOW, HL) == pytest.approx(
        (2 + SEGMENT_WEIGHT * base) / (2 + SEGMENT_WEIGHT)
    )
    assert prior_rate(thick, "marketing@pro", "email", NOW, HL) == pytest.approx(0.5, abs=0.03)
    assert prior_rate(thin, "marketing@free", "email", NOW, HL) == pytest.approx(base)
