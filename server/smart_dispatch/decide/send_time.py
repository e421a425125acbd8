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
Thompson sampling explores a little: only hours whose posterior mean is at least `PLAUSIBLE`
(0.8) of the best hour's are sampled (the rest keep their mean), so it tries hours near the best
one, never clearly bad ones; the best sampled candidate wins, ties going to the earlier one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from smart_dispatch.behaviour.base import Decayed, Population, slot_of
from smart_dispatch.rules.model import SendTime

#: ACTIVE events before a person's own rhythm weighs as much as everyone's
ACTIVITY_WEIGHT = 5.0
#: Thompson sampling tries only hours whose mean is at least this share of the best hour's
PLAUSIBLE = 0.8
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


_KERNEL_SUM = 2.5  # the weights `_smooth` gives an hour and its neighbours: 1 + 2 x 1/2 + 2 x 1/4


class _Counts:
    """Slot counts, already decayed, as arrays by kind of day and hour: `slot:<slot>:<kind>`."""

    def __init__(self, values: Mapping[str, float]) -> None:
        self._raw: dict[tuple[str, str], list[float]] = {
            (day, kind): [0.0] * 24 for day in ("wd", "we") for kind in ("sent", "opened")
        }
        self.totals = {"sent": 0.0, "opened": 0.0}
        for key, value in values.items():
            parts = key.split(":")
            if len(parts) != 3:
                continue
            slot, kind = parts[1], parts[2]
            hours = self._raw.get((slot[:2], kind))
            if hours is not None and len(slot) == 4 and slot[2:].isdigit() and int(slot[2:]) < 24:
                hours[int(slot[2:])] += value
                self.totals[kind] += value
        self._smoothed: dict[tuple[str, str], list[float]] = {}

    def smoothed(self, days: str, kind: str) -> list[float]:
        """Per hour, the count on `days` (`wd`, `we`, or `all`) plus its neighbours' (an hour
        either side weighs 1/2, two hours 1/4), circularly. Computed once per kind."""
        known = self._smoothed.get((days, kind))
        if known is None:
            if days == "all":
                raw = [a + b for a, b in zip(self._raw[("wd", kind)], self._raw[("we", kind)], strict=True)]
            else:
                raw = self._raw[(days, kind)]
            known = self._smoothed[(days, kind)] = _smooth(raw)
        return known

    def at_hour(self, slot: str, enough: float) -> tuple[float, float]:
        """(sends, opens) smoothed around `slot`'s hour: on its kind of day when that has
        `enough` sends, else on every day."""
        hour, days = int(slot[2:]), slot[:2]
        sent = self.smoothed(days, "sent")[hour]
        if sent < enough:
            days = "all"
            sent = self.smoothed(days, "sent")[hour]
        return sent, min(self.smoothed(days, "opened")[hour], sent)

    def total(self, kind: str) -> float:
        return self.totals[kind]


def best_send_time(
    earliest: datetime,
    zone: ZoneInfo,
    spec: SendTime,
    own: Mapping[str, Decayed],
    population: Population,
    now_s: float,
    half_life_s: float,
    rng: random.Random,
    allowed: Callable[[time], bool],
    not_after: datetime | None = None,
    keep: int | None = None,
) -> list[SlotScore]:
    """The candidates scored, best first; empty when none is allowed. `allowed` is given each
    candidate's local time of day. `keep`: only the best so many (a decision without explain
    needs the winner alone)."""
    mine = _Counts({k: c.at(now_s, half_life_s) for k, c in own.items() if k.startswith("slot:")})
    curve, overall, informed = _population_curve(population, now_s, half_life_s, spec.prior_weight)
    rhythm, seen = _activity(own, zone, now_s, half_life_s)
    weight = spec.prior_weight
    own_sent = mine.total("sent")
    use_own = own_sent >= spec.min_events and own_sent > 0
    level = (min(mine.total("opened"), own_sent) + weight * overall) / (own_sent + weight)
    sampling = spec.explore == "thompson" and (informed or use_own or seen > 0)
    posteriors: list[tuple[float, str, float, float, float, float, float]] = []
    own_share, everyone_share = seen / (seen + ACTIVITY_WEIGHT), ACTIVITY_WEIGHT / (seen + ACTIVITY_WEIGHT)
    best = 0.0
    for at, local, slot in _candidates(earliest, zone, spec.within_s, not_after):
        if not allowed(local):
            continue
        lift = own_share * rhythm[local.hour] + everyone_share * curve[slot] / overall
        prior = level * lift / (1.0 - level + level * lift)  # the odds times the lift: stays below 1
        sent, opened = mine.at_hour(slot, spec.min_events) if use_own else (0.0, 0.0)
        alpha = weight * prior + opened
        beta = weight * (1.0 - prior) + (sent - opened)
        mean = alpha / (alpha + beta)
        best = max(best, mean)
        posteriors.append((at, slot, alpha, beta, sent, opened, mean))
    # explore a little: sample only the hours that could plausibly be the best
    plausible = PLAUSIBLE * best
    scored = []
    for at_s, slot, alpha, beta, sent, opened, mean in posteriors:
        sample = rng.betavariate(alpha, beta) if sampling and mean >= plausible else mean
        scored.append((-sample, at_s, slot, mean, sent, opened))
    scored.sort()
    first_s = earliest.timestamp()
    return [
        SlotScore(
            earliest if at_s == first_s else datetime.fromtimestamp(at_s, UTC), slot, mean, -neg, sent, opened
        )
        for neg, at_s, slot, mean, sent, opened in scored[:keep]
    ]


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
    scale = 24.0 / (_KERNEL_SUM * (total + ACTIVITY_PSEUDO))
    even = ACTIVITY_PSEUDO / (total + ACTIVITY_PSEUDO)
    return [scale * count + even for count in _smooth(counts)], total


def _smooth(hours: list[float]) -> list[float]:
    """Each hour's count plus its neighbours' (an hour either side weighs 1/2, two hours 1/4),
    circularly: 23:00 neighbours 00:00."""
    ring = hours[-2:] + hours + hours[:2]
    return [
        ring[h + 2] + 0.5 * (ring[h + 1] + ring[h + 3]) + 0.25 * (ring[h] + ring[h + 4]) for h in range(24)
    ]


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


_HOURS = tuple(time(hour) for hour in range(24))
_SLOTS = tuple(tuple(f"{day}{hour:02d}" for hour in range(24)) for day in ("wd", "we"))


def _candidates(
    earliest: datetime, zone: ZoneInfo, within_s: float, not_after: datetime | None
) -> list[tuple[float, time, str]]:
    """(instant as epoch seconds, local time of day, slot): `earliest`, then every following
    local full hour. Steps are absolute hours (no wall-clock arithmetic); where the zone's
    offset is the same at both ends of the window (no DST change inside), local hours are
    computed, not looked up."""
    first_s = earliest.timestamp()
    end_s = first_s + within_s
    if not_after is not None:
        end_s = min(end_s, not_after.timestamp())
    first = earliest.astimezone(zone)
    out = [(first_s, first.time(), slot_of(first))]
    step_s = first.replace(minute=0, second=0, microsecond=0).timestamp() + 3600
    offset = first.utcoffset()
    if offset is not None and offset == datetime.fromtimestamp(end_s, zone).utcoffset():
        offset_s = int(offset.total_seconds())
        while step_s <= end_s:
            local_s = int(step_s) + offset_s
            hour = local_s // 3600 % 24
            weekend = (local_s // 86400 + 3) % 7 >= 5  # 1970-01-01 was a Thursday
            out.append((step_s, _HOURS[hour], _SLOTS[weekend][hour]))
            step_s += 3600
        return out
    while step_s <= end_s:
        local = datetime.fromtimestamp(step_s, zone)
        out.append((step_s, local.time(), slot_of(local)))
        step_s += 3600
    return out


def explain(score: SlotScore) -> str:
    return (
        f"{score.slot} at {score.at.isoformat()}: P(open) mean {score.mean:.3f}, used {score.sample:.3f} "
        f"(own {score.own_opened:.1f}/{score.own_sent:.1f})"
    )
