"""The one table of rule effects (`then:`): each effect's name, how its YAML value is read and
checked, and how the values of several fired rules merge into a plan draft.

    merge      several rules that set it, in firing order (priority, then file order)
    ---------  --------------------------------------------------------------------------
    concat     the lists are joined, each item kept once, first occurrence first
    union      the sets are united
    intersect  the sets are intersected (each rule narrows)
    first      the first rule that sets it wins: a lower-priority rule cannot override it

A new effect is one row here plus its field on `rules.model.Effects` and on
`decide.draft.PlanDraft` (both named like the effect); where the plan uses it lives in decide/.
The loader (unknown effects, parsing) and the draft (`fold`) read only this table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import time
from typing import Any, Literal, Protocol, get_args

from smart_dispatch.domain import LANES, known_channels
from smart_dispatch.rules.model import (
    Choose,
    Digest,
    Explore,
    Keep,
    Objective,
    OnCap,
    QuietHours,
    QuietPolicy,
    SendTime,
)
from smart_dispatch.rules.yaml_lines import LineDict

Merge = Literal["concat", "union", "intersect", "first"]


class Fail(Protocol):
    """Makes the error for a problem at a line of the file being read."""

    @property
    def file(self) -> str: ...

    def __call__(self, line: int, problem: str) -> Exception: ...


class EffectContext(Protocol):
    """What parsing an effect may need from the loader besides its value."""

    @property
    def fail(self) -> Fail: ...

    def cap_reference(self, line: int, name: str) -> None:
        """Note a cap name, checked once every file is read."""


Parse = Callable[[Any, int, EffectContext], Any]


@dataclass(frozen=True, slots=True)
class EffectKind:
    name: str
    parse: Parse
    merge: Merge
    #: decided by the engagement model: what `without_learning` takes away to compare a
    #: ruleset with what its rules alone would do (the simulator, the learning benchmark)
    learned: bool = False


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_duration(value: Any, line: int, fail: Fail) -> float:
    """`"90s"`, `"15m"`, `"1h"`, `"1d"`, `"1w"`, `"250ms"` or a positive number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise fail(line, f"invalid duration {value!r}; use e.g. 90s, 15m, 1h, 1d")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise fail(line, f"duration must be positive and finite, got {value!r}")
    return seconds


def parse_channels(value: Any, line: int, fail: Fail) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise fail(line, f"expected a list of channels, got {value!r}")
    known = known_channels()
    for channel in value:
        if channel not in known:
            raise fail(line, unknown_channel(channel, known))
    return tuple(value)


def unknown_channel(channel: Any, known: tuple[str, ...]) -> str:
    """The problem of a channel that is neither built in nor declared by the providers file."""
    return (
        f"unknown channel {channel!r}; known: {', '.join(known)} (a custom channel, e.g. ops_chat, "
        "is declared by giving it a provider of type apprise, webhook or stub in the providers file)"
    )


def mapping(value: Any, line: int, what: str, fail: Fail) -> LineDict:
    if not isinstance(value, LineDict):
        raise fail(line, f"{what} must be a mapping, got {value!r}")
    return value


def required(spec: LineDict, key: str, fail: Fail) -> Any:
    if key not in spec or spec[key] is None:
        raise fail(spec.line, f"missing required key {key!r}")
    return spec[key]


def no_unknown_keys(spec: LineDict, allowed: frozenset[str], what: str, fail: Fail) -> None:
    for key in spec:
        if key not in allowed:
            raise fail(
                spec.line_of(key), f"unknown key {key!r} in {what}; allowed: {', '.join(sorted(allowed))}"
            )


def _channels(value: Any, line: int, context: EffectContext) -> tuple[str, ...]:
    return parse_channels(value, line, context.fail)


def _flag(name: str) -> Parse:
    def parse(value: Any, line: int, context: EffectContext) -> bool:
        if not isinstance(value, bool):
            raise context.fail(line, f"{name} must be true or false")
        return value

    return parse


def _caps(value: Any, line: int, context: EffectContext) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise context.fail(line, "caps must be a list of cap names")
    for name in value:
        context.cap_reference(line, name)
    return tuple(value)


def _on_cap(value: Any, line: int, context: EffectContext) -> OnCap:
    if value not in get_args(OnCap):
        raise context.fail(line, f"on_cap must be one of {', '.join(get_args(OnCap))}")
    return value  # type: ignore[no-any-return]


def _quiet_hours(value: Any, line: int, context: EffectContext) -> QuietHours:
    fail = context.fail
    spec = mapping(value, line, "quiet_hours", fail)
    no_unknown_keys(spec, frozenset({"from", "to", "policy"}), "quiet_hours", fail)
    start = _clock(required(spec, "from", fail), spec.line_of("from"), fail)
    end = _clock(required(spec, "to", fail), spec.line_of("to"), fail)
    if start == end:
        raise fail(spec.line_of("to"), "quiet_hours from and to must differ")
    policy = spec.get("policy", "defer")
    if policy not in get_args(QuietPolicy):
        raise fail(
            spec.line_of("policy"), f"quiet_hours policy must be one of {', '.join(get_args(QuietPolicy))}"
        )
    return QuietHours(start, end, policy)


def _clock(value: Any, line: int, fail: Fail) -> time:
    match = _CLOCK.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise fail(line, f"invalid clock time {value!r}; use HH:MM (24 h), quoted")
    return time(int(match.group(1)), int(match.group(2)))


def _lane(value: Any, line: int, context: EffectContext) -> str:
    if value not in LANES:
        raise context.fail(line, f"lane must be one of {', '.join(LANES)}")
    return value  # type: ignore[no-any-return]


def _digest(value: Any, line: int, context: EffectContext) -> Digest:
    fail = context.fail
    spec = mapping(value, line, "digest", fail)
    no_unknown_keys(spec, frozenset({"key", "window", "max_items", "keep"}), "digest", fail)
    key = spec.get("key", "")
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", key):
        raise fail(spec.line_of("key"), "digest: key is a name (letters, digits, _ . -; at most 64)")
    window = parse_duration(required(spec, "window", fail), spec.line_of("window"), fail)
    if not 1 <= window <= 7 * 86400:
        raise fail(spec.line_of("window"), "digest: window is from 1s to 7d")
    max_items = spec.get("max_items", 10)
    if isinstance(max_items, bool) or not isinstance(max_items, int) or not 1 <= max_items <= 1000:
        raise fail(spec.line_of("max_items"), "digest: max_items is a whole number from 1 to 1000")
    keep = spec.get("keep", "all")
    if keep not in get_args(Keep):
        raise fail(spec.line_of("keep"), f"digest: keep must be one of {', '.join(get_args(Keep))}")
    return Digest(key, window, max_items, keep)


def _suppress(value: Any, line: int, context: EffectContext) -> str:
    if not isinstance(value, str) or not value:
        raise context.fail(line, "suppress takes a reason string")
    return value


def _duration(value: Any, line: int, context: EffectContext) -> float:
    return parse_duration(value, line, context.fail)


def _choose(value: Any, line: int, context: EffectContext) -> Choose:
    fail = context.fail
    spec = mapping(value, line, "choose", fail)
    no_unknown_keys(spec, frozenset({"by", "objective", "margin", "explore"}), "choose", fail)
    if spec.get("by", "engagement") != "engagement":
        raise fail(spec.line_of("by"), "choose: by must be engagement")
    objective = spec.get("objective", "value")
    if objective not in get_args(Objective):
        raise fail(
            spec.line_of("objective"), f"choose: objective must be one of {', '.join(get_args(Objective))}"
        )
    explore = spec.get("explore", "thompson")
    if explore not in get_args(Explore):
        raise fail(spec.line_of("explore"), f"choose: explore must be one of {', '.join(get_args(Explore))}")
    margin = spec.get("margin", 0.9)
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 < margin <= 1:
        raise fail(spec.line_of("margin"), "choose: margin must be a number in (0, 1]")
    return Choose(objective, float(margin), explore)


def _send_time(value: Any, line: int, context: EffectContext) -> SendTime:
    fail = context.fail
    spec = mapping(value, line, "send_time", fail)
    no_unknown_keys(
        spec, frozenset({"by", "within", "min_events", "explore", "prior_weight"}), "send_time", fail
    )
    if spec.get("by", "engagement") != "engagement":
        raise fail(spec.line_of("by"), "send_time: by must be engagement")
    within = parse_duration(spec.get("within", "24h"), spec.line_of("within"), fail)
    if within > 7 * 86400:
        raise fail(spec.line_of("within"), "send_time: within is at most 7d")
    min_events = spec.get("min_events", 5)
    if isinstance(min_events, bool) or not isinstance(min_events, int) or min_events < 0:
        raise fail(spec.line_of("min_events"), "send_time: min_events must be a whole number >= 0")
    explore = spec.get("explore", "thompson")
    if explore not in get_args(Explore):
        raise fail(
            spec.line_of("explore"), f"send_time: explore must be one of {', '.join(get_args(Explore))}"
        )
    weight = spec.get("prior_weight", 50)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1e6:
        raise fail(spec.line_of("prior_weight"), "send_time: prior_weight must be a positive number")
    return SendTime(within, min_events, explore, float(weight))


def _probability(name: str) -> Parse:
    def parse(value: Any, line: int, context: EffectContext) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise context.fail(line, f"{name} must be a number from 0 to 1")
        return float(value)

    return parse


#: Every effect, in the order `fold` applies them within one rule.
EFFECTS: tuple[EffectKind, ...] = (
    EffectKind("prefer", _channels, "concat"),
    EffectKind("deny", _channels, "union"),
    EffectKind("only", _channels, "intersect"),
    EffectKind("caps", _caps, "concat"),
    EffectKind("on_cap", _on_cap, "first"),
    EffectKind("quiet_hours", _quiet_hours, "first"),
    EffectKind("bypass_caps", _flag("bypass_caps"), "first"),
    EffectKind("bypass_quiet_hours", _flag("bypass_quiet_hours"), "first"),
    EffectKind("suppress", _suppress, "first"),
    EffectKind("fallback", _channels, "first"),
    EffectKind("escalate_after", _duration, "first"),
    EffectKind("lane", _lane, "first"),
    EffectKind("digest", _digest, "first"),
    EffectKind("choose", _choose, "first", learned=True),
    EffectKind("send_time", _send_time, "first", learned=True),
    EffectKind("min_expected_engagement", _probability("min_expected_engagement"), "first", learned=True),
)
EFFECT_NAMES: frozenset[str] = frozenset(effect.name for effect in EFFECTS)
LEARNED_EFFECTS: frozenset[str] = frozenset(effect.name for effect in EFFECTS if effect.learned)


def without_learning(doc: Any) -> Any:
    """A rule file's document (as parsed YAML) with every learned effect taken out of its rules."""
    if isinstance(doc, dict):
        for rule in doc.get("rules") or []:
            then = rule.get("then") if isinstance(rule, dict) else None
            if isinstance(then, dict):
                for name in LEARNED_EFFECTS:
                    then.pop(name, None)
    return doc
