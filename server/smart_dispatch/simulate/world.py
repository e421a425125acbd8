"""The simulated people: who they are (hidden from the sidecar), when they read, how they tire.

A person belongs to a segment, lives in a timezone, has a chronotype (the local hour they are
most likely to open at) and, per channel they can be reached on, a hidden propensity: P(open)
for a message delivered at their peak hour, drawn around the segment's value. Openness falls
with the circular distance (in hours, so midnight wraps) from the peak, and with fatigue: every
message delivered in the last 24 hours divides it by (1 + per_message). The unsubscribe chance
per delivered marketing message rises with fatigue too.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from smart_dispatch.simulate.scenario import Scenario, Segment

DAY_S = 86400.0
#: The quiet hours the shipped rules keep for marketing (the oracle keeps them too).
QUIET = (21, 8)


@dataclass(slots=True)
class Person:
    id: str
    zone: ZoneInfo
    segment: Segment
    peak: float
    propensity: dict[str, float]
    addresses: dict[str, str]
    attributes: dict[str, str] = field(default_factory=dict)  # what the company knows of them
    opted_out: set[str] = field(default_factory=set)
    delivered: deque[float] = field(default_factory=deque)  # delivery instants of the last day

    def fatigue(self, now_s: float) -> int:
        while self.delivered and self.delivered[0] <= now_s - DAY_S:
            self.delivered.popleft()
        return len(self.delivered)

    def reachable(self) -> list[str]:
        return [c for c in self.addresses if c not in self.opted_out]


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def make_people(scenario: Scenario, rng: random.Random) -> list[Person]:
    people = []
    segments = {s.name: s for s in scenario.segments}
    chronotypes = {c.name: c for c in scenario.chronotypes}
    for index in range(scenario.users):
        segment = segments[_pick(rng, {s.name: s.share for s in scenario.segments})]
        chronotype = chronotypes[_pick(rng, {c.name: c.share for c in scenario.chronotypes})]
        zone = _pick(rng, scenario.timezones)
        user = f"u{index}"
        addresses = {c: f"{c}-{user}" for c, share in segment.reach.items() if rng.random() < share}
        if not addresses:  # everyone can be reached somehow
            addresses = {"email": f"email-{user}"}
        propensity = {}
        for channel in addresses:
            mean = segment.open.get(channel, 0.02)
            kappa = 20.0
            propensity[channel] = rng.betavariate(max(mean * kappa, 1e-3), max((1 - mean) * kappa, 1e-3))
        peak = (chronotype.peak + rng.gauss(0.0, 1.0)) % 24
        attributes = {}
        if scenario.profile_attribute and segment.profile:
            attributes[scenario.profile_attribute] = _pick(rng, segment.profile)
        people.append(Person(user, ZoneInfo(zone), segment, peak, propensity, addresses, attributes))
    return people


def peak_distance(person: Person, at: datetime) -> float:
    """Hours between `at` (the person's local clock) and their peak hour, circularly."""
    local = at.astimezone(person.zone)
    distance = abs(local.hour + local.minute / 60.0 - person.peak) % 24
    return min(distance, 24 - distance)


def openness(person: Person, at: datetime, spread: float) -> float:
    distance = peak_distance(person, at)
    return math.exp(-(distance**2) / (2 * spread**2))


def p_open(person: Person, channel: str, at: datetime, scenario: Scenario) -> float:
    tired = 1.0 + scenario.fatigue_per_message * person.fatigue(at.timestamp())
    return person.propensity.get(channel, 0.0) * openness(person, at, scenario.hour_spread) / tired


def in_quiet_hours(person: Person, at: datetime) -> bool:
    hour = at.astimezone(person.zone).hour
    return hour >= QUIET[0] or hour < QUIET[1]


def oracle_choice(
    person: Person, earliest: datetime, scenario: Scenario, category: str
) -> tuple[str, datetime]:
    """What someone who knew the hidden truth would do within a day of `earliest`: the channel
    and hour (outside quiet hours) with the best P(open) x value - cost."""
    value = scenario.values.get(category, 1.0)
    best: tuple[float, str, datetime] | None = None
    start = earliest.replace(minute=0, second=0, microsecond=0)
    candidates = [earliest] + [start + timedelta(hours=h) for h in range(1, 25)]
    for at in candidates:
        if in_quiet_hours(person, at):
            continue
        for channel in person.reachable():
            score = p_open(person, channel, at, scenario) * value - scenario.channels[channel].cost
            if best is None or score > best[0]:
                best = (score, channel, at)
    if best is None:
        channels = person.reachable() or list(person.addresses)
        return channels[0], earliest
    return best[1], best[2]


def message_stream(
    scenario: Scenario, people: list[Person], rng: random.Random
) -> list[tuple[float, int, str]]:
    """(instant, person index, category) of every message the company emits, in time order."""
    out: list[tuple[float, int, str]] = []
    first, last = scenario.marketing_hours
    for day in range(scenario.days):
        day_start = (scenario.start + timedelta(days=day)).timestamp()
        for index in range(len(people)):
            for category, rate in scenario.messages.items():
                for _ in range(_poisson(rng, rate)):
                    if category == "marketing":
                        at = day_start + rng.uniform(first * 3600, last * 3600)
                    else:
                        at = day_start + rng.uniform(0, DAY_S)
                    out.append((at, index, category))
    out.sort()
    return out


def sessions(scenario: Scenario, people: list[Person], rng: random.Random) -> list[tuple[float, int]]:
    """(instant, person index) of every app session (an ACTIVE event), in time order: `active`
    a day per person of their segment, at local hours spread around their peak like openness."""
    out: list[tuple[float, int]] = []
    for day in range(scenario.days):
        for index, person in enumerate(people):
            count = _poisson(rng, person.segment.active)
            if not count:
                continue
            midnight = (scenario.start + timedelta(days=day)).astimezone(person.zone)
            midnight = midnight.replace(hour=0, minute=0, second=0, microsecond=0)
            for _ in range(count):
                hours = (person.peak + rng.gauss(0.0, scenario.hour_spread)) % 24
                out.append(((midnight + timedelta(hours=hours)).timestamp(), index))
    out.sort()
    return out


def _poisson(rng: random.Random, rate: float) -> int:
    limit, product, count = math.exp(-rate), rng.random(), 0
    while product > limit:
        product *= rng.random()
        count += 1
    return count
