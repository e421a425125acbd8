"""Quiet-hours arithmetic in the recipient's timezone. Pure functions."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from smart_dispatch.rules.model import QuietHours


def in_window(local: time, start: time, end: time) -> bool:
    """Is `local` inside [start, end)? Windows with start > end wrap midnight."""
    if start < end:
        return start <= local < end
    return local >= start or local < end


def quiet_hours_end(at: datetime, zone: ZoneInfo, quiet: QuietHours) -> datetime | None:
    """When the quiet window containing `at` opens for sends again (UTC), or None when `at` is
    outside it. Across a DST change the local wall-clock end is kept (08:00 stays 08:00)."""
    local = at.astimezone(zone)
    if not in_window(local.time().replace(tzinfo=None), quiet.start, quiet.end):
        return None
    end = datetime.combine(local.date(), quiet.end, tzinfo=zone)
    if end <= local:
        end = datetime.combine(local.date() + timedelta(days=1), quiet.end, tzinfo=zone)
    return end.astimezone(at.tzinfo)
