"""One decision as the decision log keeps it: a JSON-able dict, masked.

The decision (verdict, plan with masked addresses, reasons, caps, fired rules, ruleset version,
trace ids, the user as a keyed HMAC pseudonym) and what replay needs to decide it again:

    "request": the request's non-personal fields - message id, category, labels, template,
               allowed channels, not_after, bulk; the recipient's timezone, locale, the channels
               it had an address for (never the addresses), opted-out and preferred channels,
               and its scalar attributes (values that look like an e-mail address or a phone
               number masked; at most 64 labels and attributes, strings clipped to 128);
    "state":   what the decision read - list memberships, the person's behaviour counts and
               preferences;
    "dims":    the analytics dimensions - category, channel, rule, template, day, and `why`,
               the reason code that suppressed or deferred it.

No raw phone number, e-mail address, push token or user id is in an entry, nor any message data.
The facts the rules matched are not kept: they follow from request, state and clock, and replay
derives them again (keeping them cost every decision a second masked copy of the profile).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from smart_dispatch.behaviour.base import Behaviour
from smart_dispatch.decide import reasons as R
from smart_dispatch.domain import CapState, DecideRequest, Decision, PlanStep, Reason, Verdict
from smart_dispatch.preferences.base import PATHS
from smart_dispatch.preferences.redis import encode_fields
from smart_dispatch.telemetry.redact import hash_user, mask_address, mask_value

if TYPE_CHECKING:
    from smart_dispatch.telemetry.base import DecisionMade

SCHEMA = 1
#: Reason codes that explain a choice but are not why a message was held or dropped.
_INFORMATIONAL = frozenset(
    {
        R.CHANNEL_SELECTED,
        R.ALLOW_LISTED,
        R.CAPS_BYPASSED,
        R.QUIET_HOURS_BYPASSED,
        R.LEARNED_CHOICE,
        R.DUPLICATE,
        R.STORE_UNAVAILABLE,
    }
)


def log_entry(event: DecisionMade, key: bytes) -> dict[str, Any]:
    """The decision log entry of a decision (see the module docstring)."""
    request, decision = event.request, event.decision
    entry: dict[str, Any] = {
        "ts": event.at.isoformat(),
        "decision_id": decision.decision_id,
        "message_id": request.message.id,
        "category": request.message.category,
        "user": hash_user(request.recipient.user_id, key),
        "dry_run": request.dry_run,
        "ruleset_version": decision.ruleset_version,
        "verdict": decision.verdict.value,
        "fired_rules": list(decision.matched_rules),
        "reasons": [{"code": r.code, "rule": r.rule, "detail": r.detail} for r in decision.reasons],
        "caps": [
            {
                "name": c.name,
                "limit": c.limit,
                "window_s": c.window_s,
                "used": c.used,
                "remaining": c.remaining,
                "reset_at": _iso(c.reset_at),
            }
            for c in decision.caps
        ],
        "plan": [
            {"channel": s.channel, "address": mask_address(s.channel, s.address), "send_at": _iso(s.send_at)}
            for s in decision.steps
        ],
        "send_at": _iso(decision.send_at),
        "escalate_after_s": decision.escalate_after_s,
        "trace_id": event.trace_id,
        "span_id": event.span_id,
        "v": SCHEMA,
        "at_ms": int(event.at.timestamp() * 1000),
        "lane": decision.lane,
        "request": _request(request),
    }
    seen = decision.seen
    if seen is not None:
        entry["state"] = {
            "lists": sorted(seen.memberships),
            "behaviour": encode_behaviour(seen.behaviour),
            "preferences": dict(f for f in encode_fields(seen.preferences, PATHS) if f[1])
            if seen.preferences is not None
            else {},
        }
    entry["dims"] = dims_of(request, decision, event.at)
    return entry


def dims_of(request: DecideRequest, decision: Decision, at: datetime) -> dict[str, str]:
    """The analytics dimensions of a decision."""
    rule = next((r.rule for r in decision.reasons if r.code == R.CHANNEL_SELECTED and r.rule), "")
    if not rule and decision.matched_rules:
        rule = decision.matched_rules[0]
    why = ""
    if decision.verdict is not Verdict.SEND:
        causes = [r.code for r in decision.reasons if r.code not in _INFORMATIONAL and ":" not in r.code]
        why = causes[-1] if causes else "other"
    return {
        "day": at.astimezone(UTC).date().isoformat(),
        "category": request.message.category,
        "channel": decision.steps[0].channel if decision.steps else "",
        "rule": rule,
        "template": request.message.template,
        "verdict": decision.verdict.value,
        "why": why,
    }


def encode_behaviour(behaviour: Behaviour) -> dict[str, str]:
    """The behaviour as its Redis hash holds it (`behaviour.redis.decode_behaviour` reads it)."""
    fields = {name: count.encode() for name, count in behaviour.counts.items()}
    if behaviour.last_active_at is not None:
        fields["active_ms"] = str(int(behaviour.last_active_at.timestamp() * 1000))
    return fields


def _request(request: DecideRequest) -> dict[str, Any]:
    message, recipient = request.message, request.recipient
    return {
        "message": {
            "id": message.id,
            "category": message.category,
            "labels": _kept(message.labels),
            "template": message.template,
            "channels": list(message.channels),
            "not_after": None if message.not_after is None else message.not_after.isoformat(),
        },
        "recipient": {
            "timezone": recipient.timezone,
            "locale": recipient.locale,
            "channels": sorted(c for c, address in recipient.addresses.items() if address),
            "opted_out": sorted(recipient.opted_out),
            "preferred": list(recipient.preferred),
            "attributes": _kept({k: mask_value(v) for k, v in recipient.attributes.items() if _scalar(v)}),
        },
        "bulk": request.bulk,
    }


#: What an entry keeps of a request's labels and attributes: at most this many, each string
#: clipped, so a request near its size limits costs the log a few KB, not a megabyte.
MAX_KEPT_FIELDS = 64
MAX_KEPT_CHARS = 128


def _kept(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if len(out) >= MAX_KEPT_FIELDS:
            break
        clipped = value[:MAX_KEPT_CHARS] if isinstance(value, str) else value
        out[key[:MAX_KEPT_CHARS]] = clipped
    return out


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def pseudonym(user_id: str, key: bytes) -> str:
    """The user's pseudonym in the log (for finding one person's decisions)."""
    return hash_user(user_id, key)


def decision_of(entry: Mapping[str, Any]) -> Decision:
    """The decision an entry records (addresses masked, no explanation)."""
    return Decision(
        decision_id=entry["decision_id"],
        verdict=Verdict(entry["verdict"]),
        steps=tuple(
            PlanStep(s["channel"], s["address"], _instant(s["send_at"])) for s in entry.get("plan", ())
        ),
        send_at=_instant(entry["send_at"]) if entry.get("send_at") else None,
        reasons=tuple(
            Reason(r["code"], r.get("rule", ""), r.get("detail", "")) for r in entry.get("reasons", ())
        ),
        matched_rules=tuple(entry.get("fired_rules", ())),
        caps=tuple(
            CapState(
                c["name"],
                c["limit"],
                c["window_s"],
                c["used"],
                c["remaining"],
                _instant(c["reset_at"]) if c.get("reset_at") else None,
            )
            for c in entry.get("caps", ())
        ),
        ruleset_version=entry.get("ruleset_version", ""),
        escalate_after_s=entry.get("escalate_after_s"),
        lane=entry.get("lane", "normal"),
    )


def _iso(instant: datetime | None) -> str | None:
    return None if instant is None else instant.isoformat()


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)
