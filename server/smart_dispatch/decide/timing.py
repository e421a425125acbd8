"""Quiet-hours arithmetic in the recipient's timezone. Pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from smart_dispatch.rules.model import QuietHours


def in_window(local: time, start: time, end: time) -> bool:
    """Is `local` inside [start, end)? Windows with start > end wrap midnight."""
    if start < end:
        return start <= local < end
    return local >= start or local < end


def quiet_hours_end(at: datetime, zone: ZoneInfo, quiet: QuietHours) -> datetime | None:
    """When the quiet window containing `at` opens for sends again, or None when `at` is
    outside it. Across a DST change the local wall-clock end is kept (08:00 stays 08:00); an end
    that falls in a spring-forward gap is the instant the clock jumps past it."""
    local = at.astimezone(zone)
    if not in_window(local.time().replace(tzinfo=None), quiet.start, quiet.end):
        return None
    day = local.date()
    if datetime.combine(day, quiet.end) <= local.replace(tzinfo=None):
        day += timedelta(days=1)
    return _first_instant_at_or_after(datetime.combine(day, quiet.end), zone).astimezone(at.tzinfo)


def _first_instant_at_or_after(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant whose local wall-clock time in `zone` is `wall` or later."""
    earlier = wall.replace(tzinfo=zone, fold=0)
    if earlier.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return earlier
    # `wall` does not exist (spring-forward gap): find the transition between the two readings.
    lo = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    hi = earlier.astimezone(UTC)
    lo, hi = min(lo, hi), max(lo, hi)
    after = hi.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    # transitions fall on whole seconds and lo < transition <= hi < lo + 1 s
    return hi.replace(microsecond=0)
