"""When a message may go: quiet hours (the rules' and the person's own), the person's mute and
the message deadline, recorded as reasons."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from smart_dispatch.decide import reasons as R
from smart_dispatch.decide.draft import PlanDraft
from smart_dispatch.decide.timing import quiet_hours_end
from smart_dispatch.decide.trace import Trace

#: Times one instant may be moved: each move ends a window or the mute, and the end of one may
#: fall inside another (the mute ends at night; the person's window ends in the rules' one).
_MAX_MOVES = 8


def after_quiet_hours(at: datetime, zone: ZoneInfo, draft: PlanDraft, trace: Trace) -> datetime | None:
    """`at`, or the first instant after it outside every quiet window (the rules', the person's)
    and past the person's mute; None when the rules' window holds it with policy drop. A rule's
    `bypass_quiet_hours` exempts from both windows, never from the mute (the draft carries one
    only for categories that are not required)."""
    windows = draft.quiet_hours is not None or draft.personal_quiet_hours is not None
    if draft.bypass_quiet_hours and windows:
        trace.add(R.QUIET_HOURS_BYPASSED, draft.source.get("bypass_quiet_hours", ""))
    for _ in range(_MAX_MOVES):
        moved = _after_mute(at, draft, trace)
        if not draft.bypass_quiet_hours:
            outside = _after_rule_window(moved, zone, draft, trace)
            if outside is None:
                return None
            moved = _after_personal_window(outside, zone, draft, trace)
        if moved == at:
            return at
        at = moved
    return at


def _after_mute(at: datetime, draft: PlanDraft, trace: Trace) -> datetime:
    mute = draft.mute_until
    if mute is None or at >= mute:
        return at
    trace.add(R.MUTED, detail=f"the person muted messages until {mute.isoformat()}; deferred")
    return mute


def _after_rule_window(at: datetime, zone: ZoneInfo, draft: PlanDraft, trace: Trace) -> datetime | None:
    quiet = draft.quiet_hours
    if quiet is None:
        return at
    end = quiet_hours_end(at, zone, quiet)
    if end is None:
        return at
    rule = draft.source.get("quiet_hours", "")
    window = f"{quiet.start:%H:%M}-{quiet.end:%H:%M} {zone.key}"
    if quiet.policy == "drop":
        trace.add(R.QUIET_HOURS, rule, f"inside quiet hours {window}; policy drop")
        return None
    trace.add(R.QUIET_HOURS, rule, f"inside quiet hours {window}; deferred to {end.isoformat()}")
    return end


def _after_personal_window(at: datetime, zone: ZoneInfo, draft: PlanDraft, trace: Trace) -> datetime:
    quiet = draft.personal_quiet_hours
    if quiet is None:
        return at
    end = quiet_hours_end(at, zone, quiet)
    if end is None:
        return at
    window = f"{quiet.start:%H:%M}-{quiet.end:%H:%M} {zone.key}"
    trace.add(
        R.PERSONAL_QUIET_HOURS,
        detail=f"inside the person's quiet hours {window}; deferred to {end.isoformat()}",
    )
    return end


def past_deadline(not_after: datetime | None, send_at: datetime, trace: Trace) -> bool:
    if not_after is None or send_at <= not_after:
        return False
    trace.add(
        R.EXPIRED, detail=f"earliest send {send_at.isoformat()} is after not_after {not_after.isoformat()}"
    )
    return True
