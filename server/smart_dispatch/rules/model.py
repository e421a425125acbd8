"""What a loaded rules directory is: frozen, validated, engine-independent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from typing import Any, Literal

from smart_dispatch.counters.base import CapSpec

OnCap = Literal["defer", "next_channel", "drop", "digest"]
QuietPolicy = Literal["defer", "drop"]
Objective = Literal["value", "cheapest_within"]
Explore = Literal["thompson", "none"]
Keep = Literal["first", "last", "all"]
#: Relative cost per message of a channel the rule files give no cost: free in-app and push,
#: cheap e-mail, WeChat and webhooks, SMS costs money.
DEFAULT_CHANNEL_COSTS: Mapping[str, float] = {
    "in_app": 0.0,
    "push": 0.0001,
    "email": 0.0005,
    "wechat": 0.0005,
    "webhook": 0.0005,
    "sms": 0.05,
}


@dataclass(frozen=True, slots=True)
class SendTime:
    """The `send_time` effect: send at the local hour, within `within_s` of the earliest allowed
    instant, with the best learned open rate; the person's own slot data count once they have
    `min_events` sends, before that the population curve decides."""

    within_s: float = 86400.0
    min_events: int = 5
    explore: Explore = "thompson"
    #: observations the population's curve is worth for one person's hour: the curve is
    #: learned from everyone, so it is worth more than a channel prior; a person's own opens
    #: move it as they accumulate, and Thompson sampling explores only "a little"
    prior_weight: float = 50.0


@dataclass(frozen=True, slots=True)
class Learning:
    """The engagement model's settings (file key `learning:`) and channel costs (`channels:`).

    `half_life_s`: how fast counts fade; `prior_weight`: how many observations the population
    prior is worth to a person with no data of their own; `values`: what one engagement of a
    category is worth (1.0 when not given), in the same unit as the costs; `segment_by`: a
    recipient attribute (low cardinality: plan, platform, acquisition channel) whose value
    splits the population prior: a person starts from the rates of people with the same value,
    themselves shrunk towards everyone's."""

    half_life_s: float = 30 * 86400.0
    prior_weight: float = 10.0
    values: Mapping[str, float] = field(default_factory=dict)
    costs: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CHANNEL_COSTS))
    segment_by: str = ""

    def value(self, category: str) -> float:
        return self.values.get(category, 1.0)

    def cost(self, channel: str) -> float:
        return self.costs.get(channel, DEFAULT_CHANNEL_COSTS.get(channel, 0.001))


@dataclass(frozen=True, slots=True)
class Digest:
    """The `digest` effect: messages for one person and `key` within a window of `window_s`
    (fixed windows, aligned to the epoch) go out as ONE message when the window ends, or at once
    when `max_items` were collected. `keep`: which items the message carries when more came
    (first, last; all: the digest goes as soon as it holds `max_items`)."""

    key: str
    window_s: float
    max_items: int = 10
    keep: Keep = "all"


@dataclass(frozen=True, slots=True)
class Choose:
    """The `choose` effect: pick the channel by learned engagement within what rules allow.
    `objective` value: maximise P(engage) x value(category) - cost(channel); cheapest_within: the
    cheapest channel whose P(engage) is at least `margin` x the best one's. `explore` thompson
    samples P(engage) from each channel's Beta posterior; none takes its mean."""

    objective: Objective = "value"
    margin: float = 0.9
    explore: Explore = "thompson"


@dataclass(frozen=True, slots=True)
class QuietHours:
    """No sends from `start` to `end` (local clock of the recipient; wraps midnight when
    `start > end`). `policy` says what happens to a message that falls inside."""

    start: time
    end: time
    policy: QuietPolicy = "defer"


@dataclass(frozen=True, slots=True)
class Effects:
    """The declarative `then` of a rule. Unset scalars (None) leave the plan draft alone."""

    prefer: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    fallback: tuple[str, ...] | None = None
    caps: tuple[str, ...] = ()
    on_cap: OnCap | None = None
    quiet_hours: QuietHours | None = None
    bypass_caps: bool | None = None
    bypass_quiet_hours: bool | None = None
    suppress: str | None = None
    #: seconds to wait for engagement (opened/clicked) after a step before the next one goes
    escalate_after: float | None = None
    choose: Choose | None = None
    send_time: SendTime | None = None
    #: suppress when the chosen channel's expected engagement is below this
    min_expected_engagement: float | None = None
    #: the delivery lane (domain.LANES); unset: by category (domain.default_lane)
    lane: str | None = None
    digest: Digest | None = None
    #: the effects this rule sets, as (name, merge, value) in the effect table's order: filled
    #: on first use by `decide.draft.fold` (a rule sets 2-3 of ~16; fold skips the rest)
    present: tuple[tuple[str, str, Any], ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )


@dataclass(frozen=True, slots=True)
class Rule:
    """`when` is a durable-rules condition over the facts document (as written in the file)."""

    name: str
    priority: int
    when: Mapping[str, Any]
    effects: Effects
    file: str
    line: int
    shadow: bool = False

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Every rule of a directory in firing order (priority, then file and position), the caps
    they may apply, the message categories they cover (`required_categories`: those nobody may
    opt out of nor mute), and the content hash as version."""

    version: str
    rules: tuple[Rule, ...]
    caps: Mapping[str, CapSpec]
    categories: frozenset[str]
    files: tuple[str, ...]
    referenced_paths: frozenset[str] = field(default_factory=frozenset)
    learning: Learning = field(default_factory=Learning)
    required_categories: frozenset[str] = field(default_factory=frozenset)
