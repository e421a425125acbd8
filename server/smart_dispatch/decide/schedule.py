"""When a message may go: quiet hours and the message deadline, recorded as reasons."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from smart_dispatch.decide import reasons as R
from smart_dispatch.decide.draft import PlanDraft
from smart_dispatch.decide.timing import quiet_hours_end
from smart_dispatch.decide.trace import Trace


def after_quiet_hours(at: datetime, zone: ZoneInfo, draft: PlanDraft, trace: Trace) -> datetime | None:
    """`at`, or the end of the quiet window it falls in; None when the policy drops it."""
    quiet = draft.quiet_hours
    if quiet is None:
        return at
    if draft.bypass_quiet_hours:
        trace.add(R.QUIET_HOURS_BYPASSED, draft.source.get("bypass_quiet_hours", ""))
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


def past_deadline(not_after: datetime | None, send_at: datetime, trace: Trace) -> bool:
    if not_after is None or send_at <= not_after:
        return False
    trace.add(
        R.EXPIRED, detail=f"earliest send {send_at.isoformat()} is after not_after {not_after.isoformat()}"
    )
    return True
