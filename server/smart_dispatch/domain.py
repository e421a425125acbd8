"""Core value objects of a decision. Frozen, protobuf-free; `api/` converts at the edge.

Times are timezone-aware `datetime` in UTC; durations are seconds (`*_s`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from smart_dispatch.behaviour.base import Behaviour

if TYPE_CHECKING:
    from smart_dispatch.preferences.base import Preferences
    from smart_dispatch.rules.model import Digest

#: The built-in channels. The set is open in the API (channels are strings) but a rule file or
#: request naming a channel that is neither built in nor custom (`known_channels`) is rejected.
KNOWN_CHANNELS: tuple[str, ...] = ("sms", "email", "in_app", "wechat", "push", "webhook")
#: A custom channel's name: what the providers file may declare (e.g. `ops_chat`).
CUSTOM_CHANNEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_known_channels: tuple[str, ...] = KNOWN_CHANNELS


def known_channels() -> tuple[str, ...]:
    """The channels rules, requests, events and preferences may name: the built-in ones, then
    the custom ones of this process's providers file (`set_custom_channels`)."""
    return _known_channels


def custom_channels() -> tuple[str, ...]:
    """The custom channels in force (`known_channels` without the built-in ones)."""
    return _known_channels[len(KNOWN_CHANNELS) :]


def set_custom_channels(names: Iterable[str]) -> None:
    """Make `names` (besides the built-in channels) the process's custom channels, replacing
    the previous ones. The runtime calls it with the providers file's channels of a type that
    serves any channel (channels/registry.py), before the rules load. Raises `ValueError` for
    a name that is not `CUSTOM_CHANNEL_NAME`."""
    global _known_channels
    custom: list[str] = []
    for name in names:
        if not CUSTOM_CHANNEL_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a channel name (a-z, 0-9, _; a letter first; 32 at most)")
        if name not in KNOWN_CHANNELS and name not in custom:
            custom.append(name)
    _known_channels = (*KNOWN_CHANNELS, *custom)


#: Delivery lanes, most urgent first: the sender pool serves them by weight (see dispatch/lanes.py).
LANES: tuple[str, ...] = ("critical", "high", "normal", "bulk")
_DEFAULT_LANES = {"otp": "critical", "alert": "critical", "transactional": "high"}


def default_lane(category: str, bulk: bool = False) -> str:
    """The lane of a message no rule put in one: otp and alert critical (even in a bulk send),
    then bulk sends bulk, transactional high, everything else (marketing) normal."""
    lane = _DEFAULT_LANES.get(category, "normal")
    return "bulk" if bulk and lane != "critical" else lane


@dataclass(frozen=True, slots=True)
class Message:
    """What a caller wants to send. `channels` empty means any channel is allowed."""

    id: str
    category: str
    labels: Mapping[str, str] = field(default_factory=dict)
    template: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    channels: tuple[str, ...] = ()
    not_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class Recipient:
    """The person. `addresses` maps channel -> address (phone, e-mail, openid, token, URL, inbox)."""

    user_id: str
    timezone: str = "UTC"
    locale: str = ""
    addresses: Mapping[str, str] = field(default_factory=dict)
    opted_out: frozenset[str] = frozenset()
    preferred: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DecideRequest:
    message: Message
    recipient: Recipient
    dry_run: bool = False
    explain: bool = False
    #: the request clock (`DecideRequest.at`): decide as of this instant; None for the sidecar's
    at: datetime | None = None
    #: part of a bulk send (DispatchBatch): the bulk lane unless a rule, or an urgent category, says
    bulk: bool = False


class Verdict(enum.Enum):
    SEND = "send"
    DEFER = "defer"
    SUPPRESS = "suppress"


@dataclass(frozen=True, slots=True)
class PlanStep:
    """One channel attempt: the first step is the primary channel, later ones are fallbacks."""

    channel: str
    address: str
    send_at: datetime


@dataclass(frozen=True, slots=True)
class Reason:
    """A machine-readable reason code, the rule that caused it (if any) and a human detail."""

    code: str
    rule: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CapState:
    """A cap as seen by one decision. `reset_at` is when the oldest counted send leaves the
    window (None when nothing is counted)."""

    name: str
    limit: int
    window_s: float
    used: int
    remaining: int
    reset_at: datetime | None


@dataclass(frozen=True, slots=True)
class RuleEvaluation:
    name: str
    matched: bool
    priority: int
    location: str
    shadow: bool


@dataclass(frozen=True, slots=True)
class AppliedEffect:
    """One effect of a matched rule as applied to the plan (`value` rendered as text)."""

    rule: str
    effect: str
    value: str
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Seen:
    """What a decision read about the person (list memberships, behaviour) and the facts the
    rules saw: the decision log keeps them, masked, so a decision can be explained and replayed
    on a copy of the state it saw."""

    memberships: frozenset[str]
    behaviour: Behaviour
    facts: Mapping[str, Any]
    preferences: Preferences | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """How a decision was reached: the facts, every rule's outcome, the effects applied in
    order and the ranked channels."""

    facts: Mapping[str, Any]
    rules: tuple[RuleEvaluation, ...]
    effects: tuple[AppliedEffect, ...]
    ranked_channels: tuple[str, ...]
    #: the learned choice's candidates, best first, each "channel: numbers" (empty without it)
    learned: tuple[str, ...] = ()
    #: the send-time choice's candidates, best first (empty without a `send_time` effect)
    send_times: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str
    verdict: Verdict
    steps: tuple[PlanStep, ...]
    send_at: datetime | None
    reasons: tuple[Reason, ...]
    matched_rules: tuple[str, ...]
    caps: tuple[CapState, ...]
    ruleset_version: str
    explanation: Explanation | None = None
    #: seconds to wait for engagement after each step before the next (escalation), if any
    escalate_after_s: float | None = None
    #: the delivery lane a dispatch of it is queued in (`LANES`)
    lane: str = "normal"
    #: set when a rule collects the message into a digest (Dispatch only; Decide just says so)
    digest: Digest | None = None
    #: over a cap with `on_cap: digest`: folded with the others into one message at this instant
    digest_until: datetime | None = None
    #: what the decision read and the facts the rules saw (for the decision log; never returned)
    seen: Seen | None = None
    #: the decision span as a W3C traceparent, when this sidecar traces: a dispatch's send
    #: attempts are its children, on whichever sidecar sends (never returned)
    traceparent: str = ""
