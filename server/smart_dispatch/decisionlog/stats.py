"""Analytics rows from the day counts: filter, group by the chosen dimensions, sum."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from smart_dispatch.decisionlog.base import DIMENSIONS, SEP
from smart_dispatch.errors import InvalidRequestError

MAX_DAYS = 400
#: metrics that are plain sums (the others are `suppressed:<reason>` / `deferred:<reason>`)
SUMS = (
    "decided",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "converted",
    "conversion_value",
    "bounced",
    "unsubscribed",
    "failed",
    "cost",
)


@dataclass(slots=True)
class StatsRow:
    key: dict[str, str]
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SUMS, 0.0))
    suppressed: dict[str, float] = field(default_factory=dict)
    deferred: dict[str, float] = field(default_factory=dict)

    def rate(self, numerator: str, denominator: str) -> float | None:
        below = self.sums[denominator]
        return None if not below else self.sums[numerator] / below


def days_between(first: date, last: date) -> list[str]:
    """The UTC days from `first` to `last`, inclusive. Raises InvalidRequestError for a reversed
    or too long range."""
    if last < first:
        raise InvalidRequestError("start", f"{first.isoformat()} is after the end, {last.isoformat()}")
    count = (last - first).days + 1
    if count > MAX_DAYS:
        raise InvalidRequestError("start", f"a range of at most {MAX_DAYS} days, got {count}")
    return [(first + timedelta(days=n)).isoformat() for n in range(count)]


def checked_group_by(group_by: Sequence[str]) -> tuple[str, ...]:
    for n, name in enumerate(group_by):
        if name not in DIMENSIONS:
            raise InvalidRequestError(
                f"group_by[{n}]", f"unknown dimension {name!r}; known: {', '.join(DIMENSIONS)}"
            )
    return tuple(dict.fromkeys(group_by)) or DIMENSIONS


def stats_rows(
    counts: Mapping[str, Mapping[str, float]],
    group_by: Sequence[str],
    filters: Mapping[str, str],
) -> list[StatsRow]:
    """Rows of the day counts (`DecisionLogStore.counts`), one per combination of the `group_by`
    dimensions, over the fields matching every non-empty filter; sorted by their key."""
    rows: dict[tuple[str, ...], StatsRow] = {}
    for day, fields in counts.items():
        for name, amount in fields.items():
            parts = name.split(SEP)
            if len(parts) != 5:
                continue
            values = {
                "day": day,
                "category": parts[0],
                "channel": parts[1],
                "rule": parts[2],
                "template": parts[3],
            }
            if any(want and values[dim] != want for dim, want in filters.items()):
                continue
            key = tuple(values[dim] for dim in group_by)
            row = rows.get(key)
            if row is None:
                row = rows[key] = StatsRow(dict(zip(group_by, key, strict=True)))
            metric = parts[4]
            kind, _, reason = metric.partition(":")
            if kind == "suppressed":
                row.suppressed[reason] = row.suppressed.get(reason, 0.0) + amount
            elif kind == "deferred":
                row.deferred[reason] = row.deferred.get(reason, 0.0) + amount
            elif metric in row.sums:
                row.sums[metric] += amount
    return [rows[key] for key in sorted(rows)]
