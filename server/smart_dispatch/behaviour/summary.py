"""One person's engagement as an operator reads it: the model's counts (behaviour/base.py)
decayed to one instant, per channel and per hour of the day. Pure: no I/O.

Hours come from two sources: per local time slot (`wd07`: a weekday 07:00-07:59 in the person's
time zone as the decision knew it), the messages decided and opened; per UTC hour, the person's
ACTIVE events (events carry no time zone).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from smart_dispatch.behaviour.base import COUNTED, Behaviour, ChannelStats

HOURS = 24


@dataclass(frozen=True, slots=True)
class HourCounts:
    """Messages decided for one local hour, and how many of them were opened (decayed)."""

    sent: float = 0.0
    opened: float = 0.0

    @property
    def open_rate(self) -> float | None:
        """Opens per message sent in this hour; None when nothing was sent."""
        return min(1.0, self.opened / self.sent) if self.sent > 0 else None


@dataclass(frozen=True, slots=True)
class EngagementSummary:
    """`channels`: each channel's counts decayed to the read instant, by channel name;
    `weekday_hours` / `weekend_hours`: 24 entries, index = local hour; `active_utc_hours`: 24
    decayed ACTIVE counts, index = UTC hour."""

    last_active_at: datetime | None
    channels: Mapping[str, ChannelStats]
    weekday_hours: tuple[HourCounts, ...]
    weekend_hours: tuple[HourCounts, ...]
    active_utc_hours: tuple[float, ...]

    @property
    def empty(self) -> bool:
        return not self.channels and not any(self.active_utc_hours) and self.last_active_at is None


def summarize(behaviour: Behaviour, now_s: float, half_life_s: float) -> EngagementSummary:
    """`behaviour`'s counts decayed to `now_s` with the ruleset's half-life."""
    kinds = frozenset(COUNTED)
    channels = sorted(
        {channel for channel, _, kind in (key.partition(":") for key in behaviour.counts) if kind in kinds}
    )
    slots = {(day, kind): [0.0] * HOURS for day in ("wd", "we") for kind in ("sent", "opened")}
    active = [0.0] * HOURS
    for key, count in behaviour.counts.items():
        parts = key.split(":")
        if parts[0] == "slot" and len(parts) == 3:  # slot:wd07:opened
            hours = slots.get((parts[1][:2], parts[2]))
            hour = _hour(parts[1][2:])
            if hours is not None and hour is not None:
                hours[hour] += count.at(now_s, half_life_s)
        elif key.startswith("active:u") and (hour := _hour(key[8:])) is not None:
            active[hour] += count.at(now_s, half_life_s)
    return EngagementSummary(
        last_active_at=behaviour.last_active_at,
        channels={channel: behaviour.stats(channel, now_s, half_life_s) for channel in channels},
        weekday_hours=_hours(slots[("wd", "sent")], slots[("wd", "opened")]),
        weekend_hours=_hours(slots[("we", "sent")], slots[("we", "opened")]),
        active_utc_hours=tuple(active),
    )


def _hour(text: str) -> int | None:
    if len(text) == 2 and text.isdigit() and int(text) < HOURS:
        return int(text)
    return None


def _hours(sent: list[float], opened: list[float]) -> tuple[HourCounts, ...]:
    return tuple(HourCounts(s, o) for s, o in zip(sent, opened, strict=True))
