"""Send-time optimisation: the hour, within a window, at which this person is most likely to open.
Pure but for the random source it is given.

Candidates are the earliest allowed instant and the start of every following local hour inside
`within` (and before the message deadline), each outside quiet hours. Each candidate's slot
(`wd07`, `we21`: base.slot_of) has a Beta posterior of P(open | sent at that hour):

- the prior: the person's own overall open rate (their opens / sends, shrunk towards everyone's
  rate), its odds multiplied by a lift for the hour, worth `prior_weight` observations. The lift is everyone's
  (everyone's rate at that hour / everyone's rate), moving towards the person's own rhythm as
  their ACTIVE events (sessions, logins: the hours they are around, far more often seen than
  opens) accumulate: with A events, the person's activity shape weighs A / (A + 5). So a person
  who opens a lot and one who rarely does both start from everyone's daily rhythm, at their own
  level, and a person seen in the app at 19:00 every day is sent to at 19:00;
- the evidence: the person's own sends and opens at that hour. Opens are counted against sends
  in the same slot, so a person is not "learned" to like the hours we happened to send at.

Counts borrow from neighbouring hours (kernel 1/4, 1/2, 1, 1/2, 1/4, circular: 23:00 neighbours
00:00), since openness changes smoothly with the hour and a person's data are sparse; both sends
and opens are smoothed, so an untried hour next to a good one looks as good, with less weight.
Weekdays and weekends are apart where the data allow (`min_events` smoothed sends in that kind
of day for a person, `prior_weight` for everyone), pooled otherwise. Until everybody's sends add
up to `prior_weight` (a new install) the population's hours are flat, and until the person has
`min_events` sends only the population speaks; with neither, the earliest allowed instant wins.
Thompson sampling explores; the best sampled candidate wins, ties going to the earlier one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from smart_dispatch.behaviour.base import Decayed, Population, slot_of
from smart_dispatch.rules.model import SendTime

#: ACTIVE events before a person's own rhythm weighs as much as everyone's
ACTIVITY_WEIGHT = 5.0
#: pseudo-events spread evenly over the day, so one session does not make one hour everything
ACTIVITY_PSEUDO = 2.0


@dataclass(frozen=True, slots=True)
class SlotScore:
    at: datetime
    slot: str
    mean: float
    sample: float
    own_sent: float
    own_opened: float


_KERNEL = ((0, 1.0), (-1, 0.5), (1, 0.5), (-2, 0.25), (2, 0.25))


class _Counts:
    """Slot counts, already decayed: `slot:<slot>:<kind>` -> count."""

    def __init__(self, values: Mapping[str, float]) -> None:
        self._values = values

    def get(self, slot: str, kind: str) -> float:
        return self._values.get(f"slot:{slot}:{kind}", 0.0)

    def smoothed(self, days: tuple[str, ...], hour: int, kind: str) -> float:
        """The hour's count on `days` (`wd`, `we` or both) plus its neighbours' (an hour either
        side weighs 1/2, two hours 1/4), circularly."""
        return sum(
            weight * self.get(f"{day}{(hour + offset) % 24:02d}", kind)
            for offset, weight in _KERNEL
            for day in days
        )

    def at_hour(self, slot: str, enough: float) -> tuple[float, float]:
        """(sends, opens) smoothed around `slot`'s hour: on its kind of day when that has
        `enough` sends, else on every day."""
        hour = int(slot[2:])
        sent = self.smoothed((slot[:2],), hour, "sent")
        days = (slot[:2],) if sent >= enough else ("wd", "we")
        if len(days) == 2:
            sent = self.smoothed(days, hour, "sent")
        return sent, min(self.smoothed(days, hour, "opened"), sent)

    def total(self, kind: str) -> float:
        return sum(value for key, value in self._values.items() if key.endswith(f":{kind}"))


def best_send_time(
    earliest: datetime,
    zone: ZoneInfo,
    spec: SendTime,
    own: Mapping[str, Decayed],
    population: Population,
    now_s: float,
    half_life_s: float,
    rng: random.Random,
    allowed: Callable[[datetime], bool],
    not_after: datetime | None = None,
) -> list[SlotScore]:
    """The candidates scored, best first; empty when none is allowed."""
    mine = _Counts({k: c.at(now_s, half_life_s) for k, c in own.items() if k.startswith("slot:")})
    curve, overall, informed = _population_curve(population, now_s, half_life_s, spec.prior_weight)
    rhythm, seen = _activity(own, zone, now_s, half_life_s)
    weight = spec.prior_weight
    own_sent = mine.total("sent")
    use_own = own_sent >= spec.min_events and own_sent > 0
    level = (min(mine.total("opened"), own_sent) + weight * overall) / (own_sent + weight)
    sampling = spec.explore == "thompson" and (informed or use_own or seen > 0)
    scored: list[SlotScore] = []
    for at in _candidates(earliest, zone, spec.within_s, not_after):
        if not allowed(at):
            continue
        slot = slot_of(at.astimezone(zone))
        lift = (seen * rhythm[int(slot[2:])] + ACTIVITY_WEIGHT * curve[slot] / overall) / (
            seen + ACTIVITY_WEIGHT
        )
        prior = level * lift / (1.0 - level + level * lift)  # the odds times the lift: stays below 1
        sent, opened = mine.at_hour(slot, spec.min_events) if use_own else (0.0, 0.0)
        alpha = weight * prior + opened
        beta = weight * (1.0 - prior) + (sent - opened)
        mean = alpha / (alpha + beta)
        sample = rng.betavariate(alpha, beta) if sampling else mean
        scored.append(SlotScore(at, slot, mean, sample, sent, opened))
    return sorted(scored, key=lambda s: (-s.sample, s.at))


def _activity(
    own: Mapping[str, Decayed], zone: ZoneInfo, now_s: float, half_life_s: float
) -> tuple[list[float], float]:
    """The person's activity by local hour as a lift (1.0 = an average hour), smoothed over
    neighbouring hours, and how many ACTIVE events (decayed) it rests on. Kept by UTC hour, read
    with the zone's offset now (a DST change blurs it by an hour for a while)."""
    counts = [0.0] * 24
    offset_h = int((datetime.fromtimestamp(now_s, zone).utcoffset() or timedelta()).total_seconds() // 3600)
    total = 0.0
    for key, count in own.items():
        if key.startswith("active:u"):
            value = count.at(now_s, half_life_s)
            counts[(int(key[8:]) + offset_h) % 24] += value
            total += value
    if total <= 0:
        return [1.0] * 24, 0.0
    kernel_sum = sum(weight for _, weight in _KERNEL)
    rhythm = [
        24.0
        * (sum(w * counts[(hour + o) % 24] for o, w in _KERNEL) / kernel_sum + ACTIVITY_PSEUDO / 24)
        / (total + ACTIVITY_PSEUDO)
        for hour in range(24)
    ]
    return rhythm, total


def _population_curve(
    population: Population, now_s: float, half_life_s: float, min_sent: float
) -> tuple[Mapping[str, float], float, bool]:
    """Every slot's rate for everyone: smoothed opens / sends, shrunk towards the average hour
    (an hour nobody was sent at is as good as the average hour, not a coin flip); the average
    rate; and whether the curve is informed (`min_sent` sends or more; until then every hour
    gets the average rate). Computed once per population copy."""
    key = ("slot curve", half_life_s, min_sent)
    known = population.memo.get(key)
    if known is not None:
        return known  # type: ignore[no-any-return]
    everyone = _Counts(population.slot_values(now_s, half_life_s))
    informed = everyone.total("sent") >= min_sent
    overall = (min(everyone.total("opened"), everyone.total("sent")) + 1.0) / (everyone.total("sent") + 2.0)
    curve = {}
    for day in ("wd", "we"):
        for hour in range(24):
            slot = f"{day}{hour:02d}"
            sent, opened = everyone.at_hour(slot, min_sent)
            curve[slot] = (opened + 2.0 * overall) / (sent + 2.0) if informed else overall
    known = population.memo[key] = (curve, overall, informed)
    return known


def _candidates(
    earliest: datetime, zone: ZoneInfo, within_s: float, not_after: datetime | None
) -> list[datetime]:
    end = earliest + timedelta(seconds=within_s)
    if not_after is not None:
        end = min(end, not_after)
    hour = earliest.astimezone(zone).replace(minute=0, second=0, microsecond=0)
    out = [earliest]
    step = hour.astimezone(UTC) + timedelta(hours=1)  # absolute hours: no wall-clock arithmetic
    while step <= end:
        out.append(step.astimezone(earliest.tzinfo))
        step += timedelta(hours=1)
    return out


def explain(score: SlotScore) -> str:
    return (
        f"{score.slot} at {score.at.isoformat()}: P(open) mean {score.mean:.3f}, used {score.sample:.3f} "
        f"(own {score.own_opened:.1f}/{score.own_sent:.1f})"
    )
