"""Send-time optimisation: the hour, within a window, at which this person is most likely to open.
Pure but for the random source it is given.

Candidates are the earliest allowed instant and the start of every following local hour inside
`within` (and before the message deadline), each outside quiet hours. Each candidate's slot
(`wd07`, `we21`: base.slot_of) has a Beta posterior of P(open | sent in that slot): the
population's rate for the slot, worth the effect's `prior_weight` observations (default 50),
plus the person's own sends and opens in it. Opens are counted against sends in the same slot,
so a person is not "learned" to like the hours we happened to send at. Where the person has fewer
than `min_events` sends in the weekday/weekend slot, both halves of that hour are pooled; where
they have fewer than that in all slots together, only the population curve speaks. The
population's hour also borrows from its neighbours (kernel 1/4, 1/2, 1, 1/2, 1/4), since its
openness changes smoothly with the hour; a person's own counts are not smoothed (an hour next to
their opens, never tried, would look better than the hour they were opened at). Thompson
sampling explores; the best sampled candidate wins, ties going to the
earlier one. Hours are local, so midnight wraps like any other hour.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from smart_dispatch.behaviour.base import Decayed, Population, slot_of
from smart_dispatch.rules.model import SendTime


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

    def pooled(self, slot: str, kind: str) -> float:
        hour = slot[2:]
        return self.get(f"wd{hour}", kind) + self.get(f"we{hour}", kind)

    def smoothed(self, hour: int, kind: str) -> float:
        """The hour's count (weekdays and weekends pooled) plus its neighbours' (an hour either
        side weighs 1/2, two hours 1/4): openness changes smoothly with the hour, so an hour
        borrows strength from the hours around it, circularly (23:00 neighbours 00:00)."""
        return sum(weight * self.pooled(f"wd{(hour + offset) % 24:02d}", kind) for offset, weight in _KERNEL)

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
    curve = _population_curve(population, now_s, half_life_s)
    use_own = mine.total("sent") >= spec.min_events
    scored: list[SlotScore] = []
    for at in _candidates(earliest, zone, spec.within_s, not_after):
        if not allowed(at):
            continue
        slot = slot_of(at.astimezone(zone))
        rate = curve[slot]
        sent = opened = 0.0
        if use_own:
            sent, opened = mine.get(slot, "sent"), mine.get(slot, "opened")
            if sent < spec.min_events:
                sent, opened = mine.pooled(slot, "sent"), mine.pooled(slot, "opened")
            opened = min(opened, sent)
        alpha = spec.prior_weight * rate + opened
        beta = spec.prior_weight * (1.0 - rate) + (sent - opened)
        mean = alpha / (alpha + beta)
        sample = rng.betavariate(alpha, beta) if spec.explore == "thompson" else mean
        scored.append(SlotScore(at, slot, mean, sample, sent, opened))
    return sorted(scored, key=lambda s: (-s.sample, s.at))


def _population_curve(population: Population, now_s: float, half_life_s: float) -> Mapping[str, float]:
    """Every slot's prior rate: the population's smoothed opens / sends, shrunk towards the
    average hour (an hour nobody was sent at is as good as the average hour, not a coin flip).
    Computed once per population copy."""
    key = ("slot curve", half_life_s)
    known = population.memo.get(key)
    if known is not None:
        return known  # type: ignore[no-any-return]
    everyone = _Counts(population.slot_values(now_s, half_life_s))
    overall = (everyone.total("opened") + 1.0) / (everyone.total("sent") + 2.0)
    curve = {}
    for day in ("wd", "we"):
        for hour in range(24):
            slot = f"{day}{hour:02d}"
            sent, opened = everyone.smoothed(hour, "sent"), everyone.smoothed(hour, "opened")
            curve[slot] = (min(opened, sent) + 2.0 * overall) / (sent + 2.0)
    population.memo[key] = curve
    return curve


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
