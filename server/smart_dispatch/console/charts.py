"""The numbers behind the console's charts, as plain values the templates draw as SVG bars.
Pure functions: no I/O, no HTML (the templates escape and draw)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.behaviour.summary import HourCounts

#: The funnel's stages, in order, as `StatsRow` fields.
FUNNEL_STAGES = ("decided", "sent", "delivered", "opened", "clicked", "converted")
LANE_ORDER = ("critical", "high", "normal", "bulk")


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: `share` of the chart's full width (0..1), `note` what it means in words."""

    label: str
    value: float
    share: float
    note: str = ""


@dataclass(frozen=True, slots=True)
class Funnel:
    """One channel's delivery-and-engagement funnel; `cost` in the rules' cost unit."""

    channel: str
    bars: tuple[Bar, ...]
    cost: float

    @property
    def cost_per_open(self) -> float | None:
        opened = self.bars[FUNNEL_STAGES.index("opened")].value
        return self.cost / opened if opened else None


def funnels(stats: pb.GetStatsResponse) -> list[Funnel]:
    """Per channel (rows summed over every other dimension), the funnel stages on one scale
    shared by every channel, each with its share of the nearest stage before it that counted
    something. Channels with the most decisions first; rows without a channel (decisions that
    chose none) are left out."""
    totals: dict[str, dict[str, float]] = {}
    for row in stats.rows:
        if not row.channel:
            continue
        counts = totals.setdefault(row.channel, dict.fromkeys((*FUNNEL_STAGES, "cost"), 0.0))
        for stage in FUNNEL_STAGES:
            counts[stage] += getattr(row, stage)
        counts["cost"] += row.cost
    top = max((max(c[s] for s in FUNNEL_STAGES) for c in totals.values()), default=0.0)
    out = []
    for channel, counts in sorted(totals.items(), key=lambda item: (-item[1]["decided"], item[0])):
        bars = []
        for index, stage in enumerate(FUNNEL_STAGES):
            value = counts[stage]
            # against the nearest stage before it that counted anything (no delivery receipts:
            # opens against sends)
            before = next((s for s in reversed(FUNNEL_STAGES[:index]) if counts[s]), None)
            note = f"{_percent(value, counts[before])} of {before}" if before is not None else ""
            bars.append(Bar(stage, value, value / top if top else 0.0, note))
        out.append(Funnel(channel, tuple(bars), counts["cost"]))
    return out


def queue_bars(depth: Mapping[str, int]) -> list[Bar]:
    """The lanes (most urgent first) and the scheduled work, on one scale."""
    names = [*LANE_ORDER, "scheduled"]
    top = max((depth.get(name, 0) for name in names), default=0)
    return [Bar(name, depth.get(name, 0), depth.get(name, 0) / top if top else 0.0) for name in names]


def hour_bars(hours: Sequence[HourCounts]) -> list[Bar]:
    """24 bars (local hours): sends on one scale, the note giving opens and the open rate."""
    top = max((h.sent for h in hours), default=0.0)
    out = []
    for hour, counts in enumerate(hours):
        rate = counts.open_rate
        note = "" if rate is None else f"{counts.opened:.1f} opened ({rate:.0%})"
        out.append(Bar(f"{hour:02d}", counts.sent, counts.sent / top if top else 0.0, note))
    return out


def shares(values: Sequence[float]) -> list[float]:
    """Each value's share of the largest (0 when all are 0): heat-map intensities."""
    top = max(values, default=0.0)
    return [value / top if top else 0.0 for value in values]


def _percent(part: float, whole: float) -> str:
    return f"{part / whole:.0%}"
