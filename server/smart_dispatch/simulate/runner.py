"""Running one policy through a scenario: every message decided by the real pipeline (the
`Runtime` a sidecar runs, on the request clock), every delivery, open, conversion and
unsubscribe reported back through `EventRecorder.report`, the path `ReportEvent` takes.

Policies (all on the same people and message stream, from the same seed):
- learned: the shipped rules as they are (they choose marketing's channel and send time by
  learned engagement), with the scenario's channel costs and values in place of the shipped ones
  (an operator knows what their channels cost), and the prior segmented by the scenario's
  `profile_attribute` (and which attribute tells their people apart);
- static: the same rules without the learned effects (`rules.effects.without_learning`): what
  the rules alone do;
- random: the static rules, each marketing message allowed one random channel of the person's;
- oracle: the static rules, each marketing message decided at the hour and allowed only the
  channel that the hidden truth says is best (an upper bound a learner can only approach).

The simulator checks the rules' promises independently of the sidecar: no marketing delivery
inside quiet hours (21:00-08:00 local), none beyond 1 an hour or 3 a day per person.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import yaml

from smart_dispatch.config import Settings
from smart_dispatch.domain import DecideRequest, Message, Recipient, Verdict
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.events import ReportedEvent
from smart_dispatch.rules.active import ActiveRules
from smart_dispatch.rules.effects import without_learning
from smart_dispatch.runtime import Runtime
from smart_dispatch.simulate.scenario import Scenario
from smart_dispatch.simulate.world import (
    Person,
    in_quiet_hours,
    make_people,
    message_stream,
    oracle_choice,
    p_open,
    peak_distance,
    sessions,
)

POLICIES = ("static", "random", "learned", "oracle")
SHIPPED_RULES = Path(__file__).resolve().parents[3] / "rules"


@dataclass(slots=True)
class Daily:
    """Marketing outcomes per simulated day (by the day the message went out)."""

    sent: list[int]
    delivered: list[int]
    opened: list[int]
    converted: list[int]
    value: list[float]
    cost: list[float]
    unsubscribed: list[int]
    suppressed: list[int]

    @classmethod
    def empty(cls, days: int) -> Daily:
        return cls(
            [0] * days, [0] * days, [0] * days, [0] * days, [0.0] * days, [0.0] * days, [0] * days, [0] * days
        )


@dataclass(slots=True)
class PolicyResult:
    policy: str
    daily: Daily
    violations: int = 0
    decisions: int = 0
    seconds: float = 0.0
    users: int = 0
    notes: list[str] = field(default_factory=list)
    #: over the last third's marketing deliveries: how many, their summed distance (hours) from
    #: the person's peak hour, and how many went on the person's best channel (by the truth)
    late_deliveries: int = 0
    late_peak_distance_h: float = 0.0
    late_best_channel: int = 0


def rules_for(policy: str, scenario: Scenario, directory: Path) -> Path:
    """The rules directory `policy` decides with: the shipped rules with the scenario's channel
    costs and values, and for every policy but `learned` without the learning effects."""
    shipped = SHIPPED_RULES / "default.yaml"
    if not shipped.is_file():
        raise ConfigurationError(f"the simulator compares against the shipped rules: {shipped} is missing")
    doc = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    doc["channels"] = {channel: {"cost": truth.cost} for channel, truth in scenario.channels.items()}
    doc.setdefault("learning", {})["values"] = dict(scenario.values)
    if scenario.profile_attribute:  # and what they know of their people
        doc["learning"]["segment_by"] = scenario.profile_attribute
    if policy != "learned":
        without_learning(doc)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "default.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


async def run_policy(
    scenario: Scenario,
    policy: str,
    seed: int,
    store_url: str = "memory://",
    *,
    quiet: bool = False,
) -> PolicyResult:
    """Simulate `scenario` under `policy`; the same seed gives the same people and messages.
    Progress (a line per simulated day) goes to standard error unless `quiet`."""
    progress = None if quiet else sys.stderr
    with tempfile.TemporaryDirectory(prefix=f"sd-sim-{policy}-") as tmp:
        settings = Settings(
            rules_dir=rules_for(policy, scenario, Path(tmp) / "rules"),
            store_url=store_url,
            senders=0,
            watch_rules=False,
            allow_request_clock=True,
            learning_seed=seed,
            learning_prior_refresh_s=1e9,  # refreshed once per simulated day instead
            key_prefix=f"sim{seed}{policy}",
            log_level="WARNING",
            decision_log=False,  # millions of simulated decisions: no log, no analytics
        )
        runtime = await Runtime.build(settings, ActiveRules.for_settings(settings))
        try:
            return await _Simulation(scenario, policy, seed, runtime, progress).run()
        finally:
            await runtime.close()
            runtime.rules.close()


class _Simulation:
    def __init__(
        self, scenario: Scenario, policy: str, seed: int, runtime: Runtime, progress: TextIO | None
    ) -> None:
        self.scenario = scenario
        self.policy = policy
        self.runtime = runtime
        self.progress = progress
        world = random.Random(seed)
        self.people = make_people(scenario, world)
        self.stream = message_stream(scenario, self.people, world)
        self.sessions = sessions(scenario, self.people, random.Random(f"{seed}:sessions"))
        self.rng = random.Random(f"{seed}:{policy}")  # the people's dice
        self.result = PolicyResult(policy, Daily.empty(scenario.days), users=scenario.users)
        self.queue: list[tuple[float, int, Callable[[], Any]]] = []
        self.order = itertools.count()
        self.ids = itertools.count()
        self.marketing_sent: dict[str, list[float]] = {}

    def at(self, when_s: float, action: Callable[[], Any]) -> None:
        heapq.heappush(self.queue, (when_s, next(self.order), action))

    async def run(self) -> PolicyResult:
        started = time.perf_counter()
        for when_s, index, category in self.stream:
            self.at(when_s, functools.partial(self.emit, self.people[index], category, when_s))
        for when_s, index in self.sessions:
            at = datetime.fromtimestamp(when_s, UTC)
            self.at(when_s, functools.partial(self.report, self.people[index], "active", "", "", at))
        shown_day = -1
        start_s = self.scenario.start.timestamp()
        while self.queue:
            when_s, _, action = heapq.heappop(self.queue)
            day = int((when_s - start_s) // 86400)
            if day != shown_day and day < self.scenario.days:
                shown_day = day
                await self.runtime.decider.refresh_prior()
                if self.progress is not None:
                    line = f"  {self.policy:<8} day {day + 1:>3}/{self.scenario.days}"
                    print(line, file=self.progress, flush=True)
            outcome = action()
            if hasattr(outcome, "__await__"):
                await outcome
        self.result.seconds = time.perf_counter() - started
        return self.result

    def day_of(self, when_s: float) -> int:
        return min(self.scenario.days - 1, max(0, int((when_s - self.scenario.start.timestamp()) // 86400)))

    # -- the company emits a message ---------------------------------------------------------------

    def emit(self, person: Person, category: str, when_s: float) -> object:
        when = datetime.fromtimestamp(when_s, UTC)
        channels: tuple[str, ...] = ()
        if category == "marketing" and self.policy == "random" and person.reachable():
            channels = (self.rng.choice(person.reachable()),)
        if category == "marketing" and self.policy == "oracle" and person.reachable():
            channel, best = oracle_choice(person, when, self.scenario, category)
            channels = (channel,)
            if best > when:
                self.at(best.timestamp(), lambda: self.decide(person, category, best, channels))
                return None
        return self.decide(person, category, when, channels)

    async def decide(self, person: Person, category: str, when: datetime, channels: tuple[str, ...]) -> None:
        opted_out = frozenset(person.opted_out) if category == "marketing" else frozenset()
        request = DecideRequest(
            Message(f"{person.id}-{next(self.ids)}", category, channels=channels),
            Recipient(
                person.id,
                person.zone.key,
                addresses=person.addresses,
                opted_out=opted_out,
                attributes=person.attributes,
            ),
            at=when,
        )
        decision = await self.runtime.decider.decide(request)
        self.result.decisions += 1
        if decision.verdict is Verdict.SUPPRESS or not decision.steps:
            if category == "marketing":
                self.result.daily.suppressed[self.day_of(when.timestamp())] += 1
            return
        step = decision.steps[0]
        self.at(
            step.send_at.timestamp(),
            lambda: self.deliver(person, category, request.message.id, step.channel, step.send_at),
        )

    # -- the message reaches the person (or not) ---------------------------------------------------

    async def deliver(
        self, person: Person, category: str, message_id: str, channel: str, at: datetime
    ) -> None:
        at_s = at.timestamp()
        marketing = category == "marketing"
        day = self.day_of(at_s)
        if marketing:
            self.result.daily.sent[day] += 1
            self.result.daily.cost[day] += self.scenario.channels[channel].cost
        if self.rng.random() < self.scenario.channels[channel].failure:
            await self.report(person, "failed", message_id, channel, at)  # its caps are refunded
            return
        if marketing:
            self.check_promises(person, at)
            if day >= self.scenario.days - self.scenario.days // 3:
                self.result.late_deliveries += 1
                self.result.late_peak_distance_h += peak_distance(person, at)
                best = max(person.reachable() or person.addresses, key=lambda c: person.propensity[c])
                self.result.late_best_channel += channel == best
        chance = p_open(person, channel, at, self.scenario)  # before this message adds fatigue
        person.delivered.append(at_s)
        await self.report(person, "delivered", message_id, channel, at)
        if self.rng.random() < chance:  # a receipt or an alert is read like anything else
            opened = at + timedelta(minutes=self.rng.expovariate(1 / 30))
            read = functools.partial(self.open, person, message_id, channel, opened, day, marketing)
            self.at(opened.timestamp(), read)
        if not marketing:
            return
        self.result.daily.delivered[day] += 1
        unsubscribe = self.scenario.unsubscribe + self.scenario.unsubscribe_per_message * person.fatigue(at_s)
        if self.rng.random() < unsubscribe:
            person.opted_out.add(channel)
            self.result.daily.unsubscribed[day] += 1
            await self.report(person, "unsubscribed", message_id, channel, at)

    async def open(
        self, person: Person, message_id: str, channel: str, at: datetime, day: int, marketing: bool
    ) -> None:
        await self.report(person, "opened", message_id, channel, at)
        if not marketing:
            return
        self.result.daily.opened[day] += 1
        if self.rng.random() < person.segment.convert:
            value = self.scenario.values.get("marketing", 1.0)
            self.result.daily.converted[day] += 1
            self.result.daily.value[day] += value
            await self.report(person, "converted", message_id, channel, at + timedelta(minutes=10), value)

    async def report(
        self, person: Person, kind: str, message_id: str, channel: str, at: datetime, value: float = 0.0
    ) -> None:
        event = ReportedEvent(person.id, kind, at, message_id, channel, value)  # type: ignore[arg-type]
        await self.runtime.events.report(event)

    def check_promises(self, person: Person, at: datetime) -> None:
        """Quiet hours and the shipped caps (1 an hour, 3 a day), checked on what was delivered
        (a failed delivery refunds its caps, so it does not count)."""
        at_s = at.timestamp()
        sent = self.marketing_sent.setdefault(person.id, [])
        hour = sum(1 for s in sent if at_s - 3600 < s <= at_s)
        day = sum(1 for s in sent if at_s - 86400 < s <= at_s)
        if in_quiet_hours(person, at) or hour >= 1 or day >= 3:
            self.result.violations += 1
        sent.append(at_s)
        if len(sent) > 8:
            del sent[:-8]
