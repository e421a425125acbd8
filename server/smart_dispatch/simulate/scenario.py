"""A simulation scenario (YAML): a population with hidden engagement, and the messages a company
sends it over some days. The simulator decides every message through the real pipeline; only
the people are simulated. A scenario file (every key optional but `segments`):

    users: 2000                    people
    days: 21                       simulated days (the clock starts at `start`)
    start: 2026-03-02              a Monday, UTC
    timezones: {UTC: 0.5, Asia/Shanghai: 0.5}          share of people per IANA zone
    channels:                      what sending costs, and how often delivery fails
      sms: {cost: 0.05, failure: 0.02}
    segments:                      kinds of people; `open` is P(open | delivered at their best hour)
      - {name: app_people, share: 0.4, reach: {in_app: 1, email: 0.7}, open: {in_app: 0.4, email: 0.05},
         convert: 0.1, active: 3,  `active`: app sessions a day, reported as ACTIVE events, at
         profile: {app: 0.8, web: 0.2}}    hours around the person's peak; `profile`: the shares of
                                   the values of `profile_attribute` among the segment's people
    profile_attribute: acquired_via    a recipient attribute the company knows, loosely tied to
                                   the segment (the learned policy segments its prior by it)
    chronotypes: {morning: {peak: 8, share: 0.3}, evening: {peak: 20, share: 0.7}}
    hour_spread: 3                 hours: how fast openness falls away from a person's peak hour
    fatigue: {per_message: 0.15, unsubscribe: 0.001, unsubscribe_per_message: 0.002}
    messages: {marketing: 1.5, transactional: 0.3, otp: 0.1, alert: 0.05}   per person per day
    marketing_hours: [9, 18]       UTC hours the company sends marketing between
    values: {marketing: 1.0}       what one conversion is worth

Every problem is a `ConfigurationError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

from smart_dispatch.domain import KNOWN_CHANNELS
from smart_dispatch.errors import ConfigurationError

CATEGORIES = ("marketing", "transactional", "otp", "alert")


@dataclass(frozen=True, slots=True)
class ChannelTruth:
    cost: float
    failure: float


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    share: float
    reach: dict[str, float]
    open: dict[str, float]
    convert: float
    active: float = 0.0
    profile: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Chronotype:
    name: str
    peak: float
    share: float


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    segments: tuple[Segment, ...]
    users: int = 2000
    days: int = 21
    start: datetime = datetime(2026, 3, 2, tzinfo=UTC)
    timezones: dict[str, float] = field(default_factory=lambda: {"UTC": 1.0})
    channels: dict[str, ChannelTruth] = field(default_factory=dict)
    chronotypes: tuple[Chronotype, ...] = (Chronotype("day", 12, 1.0),)
    hour_spread: float = 3.0
    fatigue_per_message: float = 0.15
    unsubscribe: float = 0.001
    unsubscribe_per_message: float = 0.002
    messages: dict[str, float] = field(default_factory=lambda: {"marketing": 1.5})
    marketing_hours: tuple[int, int] = (9, 18)
    values: dict[str, float] = field(default_factory=lambda: {"marketing": 1.0})
    profile_attribute: str = ""


_DEFAULT_CHANNELS = {
    "sms": ChannelTruth(0.05, 0.02),
    "email": ChannelTruth(0.001, 0.05),
    "push": ChannelTruth(0.0001, 0.1),
    "in_app": ChannelTruth(0.0, 0.0),
    "wechat": ChannelTruth(0.0005, 0.03),
}


def load_scenario(path: Path) -> Scenario:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"{path}: cannot read the scenario: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigurationError(f"{path}: a scenario is a mapping")
    return parse_scenario(doc, path.stem)


def parse_scenario(doc: dict[str, Any], name: str) -> Scenario:
    known = {
        "users", "days", "start", "timezones", "channels", "segments", "chronotypes", "hour_spread",
        "fatigue", "messages", "marketing_hours", "values", "name", "profile_attribute",
    }  # fmt: skip
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigurationError(f"scenario: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")
    channels = dict(_DEFAULT_CHANNELS)
    for channel, spec in (doc.get("channels") or {}).items():
        _channel(channel, "channels")
        channels[channel] = ChannelTruth(
            _number(spec.get("cost", 0.0), f"channels.{channel}.cost", 0, 1e6),
            _number(spec.get("failure", 0.0), f"channels.{channel}.failure", 0, 1),
        )
    segments = tuple(_segment(spec, i) for i, spec in enumerate(_list(doc.get("segments"), "segments")))
    if not segments:
        raise ConfigurationError("scenario: segments: at least one segment")
    chronotypes = tuple(
        Chronotype(name, _number(spec.get("peak"), f"chronotypes.{name}.peak", 0, 24),
                   _number(spec.get("share", 1.0), f"chronotypes.{name}.share", 0, 1e9))
        for name, spec in (doc.get("chronotypes") or {"day": {"peak": 12}}).items()
    )  # fmt: skip
    fatigue = doc.get("fatigue") or {}
    hours = doc.get("marketing_hours", [9, 18])
    if not (isinstance(hours, list) and len(hours) == 2 and 0 <= hours[0] < hours[1] <= 24):
        raise ConfigurationError("scenario: marketing_hours: [first hour, last hour), 0..24")
    start = doc.get("start", date(2026, 3, 2))
    if not isinstance(start, date):
        raise ConfigurationError("scenario: start: a date, e.g. 2026-03-02")
    messages = {str(k): _number(v, f"messages.{k}", 0, 100) for k, v in (doc.get("messages") or {}).items()}
    for category in messages:
        if category not in CATEGORIES:
            raise ConfigurationError(
                f"scenario: messages: unknown category {category!r}; known: {CATEGORIES}"
            )
    return Scenario(
        name=str(doc.get("name", name)),
        segments=segments,
        users=int(_number(doc.get("users", 2000), "users", 1, 10_000_000)),
        days=int(_number(doc.get("days", 21), "days", 1, 3650)),
        start=datetime(start.year, start.month, start.day, tzinfo=UTC),
        timezones=_weights(doc.get("timezones") or {"UTC": 1}, "timezones"),
        channels=channels,
        chronotypes=chronotypes,
        hour_spread=_number(doc.get("hour_spread", 3.0), "hour_spread", 0.1, 24),
        fatigue_per_message=_number(fatigue.get("per_message", 0.15), "fatigue.per_message", 0, 100),
        unsubscribe=_number(fatigue.get("unsubscribe", 0.001), "fatigue.unsubscribe", 0, 1),
        unsubscribe_per_message=_number(
            fatigue.get("unsubscribe_per_message", 0.002), "fatigue.unsubscribe_per_message", 0, 1
        ),
        messages=messages or {"marketing": 1.5},
        marketing_hours=(int(hours[0]), int(hours[1])),
        values=_weights(doc.get("values") or {"marketing": 1}, "values"),
        profile_attribute=_attribute(doc.get("profile_attribute", "")),
    )  # fmt: skip


def _weights(spec: Any, where: str) -> dict[str, float]:
    if not isinstance(spec, dict):
        raise ConfigurationError(f"scenario: {where}: a mapping")
    return {str(k): _number(v, f"{where}.{k}", 0, 1e9) for k, v in spec.items()}


def _segment(spec: Any, index: int) -> Segment:
    where = f"segments[{index}]"
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigurationError(f"scenario: {where}: a mapping with a name")
    reach = {str(c): _number(v, f"{where}.reach.{c}", 0, 1) for c, v in (spec.get("reach") or {}).items()}
    opens = {str(c): _number(v, f"{where}.open.{c}", 0, 1) for c, v in (spec.get("open") or {}).items()}
    for channel in [*reach, *opens]:
        _channel(channel, where)
    return Segment(
        str(spec["name"]),
        _number(spec.get("share", 1.0), f"{where}.share", 0, 1e9),
        reach,
        opens,
        _number(spec.get("convert", 0.1), f"{where}.convert", 0, 1),
        _number(spec.get("active", 0.0), f"{where}.active", 0, 100),
        _weights(spec.get("profile") or {}, f"{where}.profile"),
    )


def _attribute(name: Any) -> str:
    if not isinstance(name, str) or len(name) > 64:
        raise ConfigurationError("scenario: profile_attribute: an attribute name, at most 64 characters")
    return name


def _channel(channel: str, where: str) -> None:
    if channel not in KNOWN_CHANNELS:
        raise ConfigurationError(
            f"scenario: {where}: unknown channel {channel!r}; known: {', '.join(KNOWN_CHANNELS)}"
        )


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigurationError(f"scenario: {where}: a list")
    return value


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigurationError(f"scenario: {where}: a number from {low:g} to {high:g}, got {value!r}")
    return float(value)
