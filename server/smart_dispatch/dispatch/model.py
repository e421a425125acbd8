"""A dispatch: one message on its way to a person, with its plan, attempts and history.

States (terminal ones in caps):

    queued ──► sending ──► DELIVERED
      ▲  │        │  └──► waiting_engagement ──► (next step) ─► …  or DELIVERED when opened
      │  ▼        ▼
    scheduled ◄── retry / deferred / escalation        FAILED (dead letter)  CANCELLED
                                                       EXPIRED  SUPPRESSED

`version` increases with every stored change; stores refuse an update whose expected version is
stale, so a cancel and a worker never overwrite each other.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from smart_dispatch.domain import Message, PlanStep, Reason, Recipient


class DispatchState(enum.Enum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    WAITING_ENGAGEMENT = "waiting_engagement"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        DispatchState.DELIVERED,
        DispatchState.FAILED,
        DispatchState.CANCELLED,
        DispatchState.EXPIRED,
        DispatchState.SUPPRESSED,
    }
)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One provider call. `outcome` is delivered | retryable_error | permanent_error."""

    step: int
    channel: str
    provider: str
    number: int
    at: datetime
    outcome: str
    error: str = ""
    idempotency_key: str = ""
    provider_message_id: str = ""


@dataclass(frozen=True, slots=True)
class StatusChange:
    at: datetime
    state: DispatchState
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DispatchRecord:
    dispatch_id: str
    message: Message
    recipient: Recipient
    state: DispatchState
    steps: tuple[PlanStep, ...]
    created_at: datetime
    send_at: datetime | None
    decision_id: str = ""
    ruleset_version: str = ""
    reasons: tuple[Reason, ...] = ()
    step_index: int = 0
    attempts: tuple[Attempt, ...] = ()
    history: tuple[StatusChange, ...] = ()
    escalate_after_s: float | None = None
    version: int = 0
    #: set when the dispatch must be decided again at send_at (it was deferred)
    redecide: bool = False
    dead_lettered: bool = False
    #: set when the current step is a later one (fallback, escalation) not yet decided again for
    #: its channel: deny list, opt-outs, quiet hours and that channel's caps apply when it goes
    recheck: bool = False
    #: the delivery lane it is queued in, every time (domain.LANES)
    lane: str = "normal"
    #: the deciding span (W3C traceparent) its send attempts' spans continue; "" when untraced
    traceparent: str = ""

    def moved(self, state: DispatchState, at: datetime, detail: str = "", **changes: Any) -> DispatchRecord:
        """A copy in `state`, with the change appended to the history."""
        history = (*self.history, StatusChange(at, state, detail))
        return replace(self, state=state, history=history, **changes)

    def attempts_in_step(self) -> int:
        return sum(1 for a in self.attempts if a.step == self.step_index)

    @property
    def current_step(self) -> PlanStep | None:
        return self.steps[self.step_index] if self.step_index < len(self.steps) else None


# --- JSON codec (records are stored as JSON in Redis) -------------------------------------------


def to_json(record: DispatchRecord) -> str:
    """The record as JSON, built field by field (`dataclasses.asdict` deep-copies everything and
    was most of the cost of storing a record)."""
    m, r = record.message, record.recipient
    raw = {
        "dispatch_id": record.dispatch_id,
        "message": {
            "id": m.id,
            "category": m.category,
            "labels": m.labels,
            "template": m.template,
            "data": m.data,
            "channels": m.channels,
            "not_after": m.not_after,
        },
        "recipient": {
            "user_id": r.user_id,
            "timezone": r.timezone,
            "locale": r.locale,
            "addresses": r.addresses,
            "opted_out": r.opted_out,
            "preferred": r.preferred,
            "attributes": r.attributes,
        },
        "state": record.state,
        "steps": [{"channel": s.channel, "address": s.address, "send_at": s.send_at} for s in record.steps],
        "created_at": record.created_at,
        "send_at": record.send_at,
        "decision_id": record.decision_id,
        "ruleset_version": record.ruleset_version,
        "reasons": [{"code": x.code, "rule": x.rule, "detail": x.detail} for x in record.reasons],
        "step_index": record.step_index,
        "attempts": [
            {
                "step": a.step,
                "channel": a.channel,
                "provider": a.provider,
                "number": a.number,
                "at": a.at,
                "outcome": a.outcome,
                "error": a.error,
                "idempotency_key": a.idempotency_key,
                "provider_message_id": a.provider_message_id,
            }
            for a in record.attempts
        ],
        "history": [{"at": h.at, "state": h.state, "detail": h.detail} for h in record.history],
        "escalate_after_s": record.escalate_after_s,
        "version": record.version,
        "redecide": record.redecide,
        "dead_lettered": record.dead_lettered,
        "recheck": record.recheck,
        "lane": record.lane,
        "traceparent": record.traceparent,
    }
    return json.dumps(raw, default=_encode, separators=(",", ":"))


def from_json(text: str | bytes) -> DispatchRecord:
    raw = json.loads(text)
    message = raw["message"]
    recipient = raw["recipient"]
    return DispatchRecord(
        dispatch_id=raw["dispatch_id"],
        message=Message(
            id=message["id"],
            category=message["category"],
            labels=message["labels"],
            template=message["template"],
            data=message["data"],
            channels=tuple(message["channels"]),
            not_after=_time(message["not_after"]),
        ),
        recipient=Recipient(
            user_id=recipient["user_id"],
            timezone=recipient["timezone"],
            locale=recipient["locale"],
            addresses=recipient["addresses"],
            opted_out=frozenset(recipient["opted_out"]),
            preferred=tuple(recipient["preferred"]),
            attributes=recipient["attributes"],
        ),
        state=DispatchState(raw["state"]),
        steps=tuple(PlanStep(s["channel"], s["address"], _req_time(s["send_at"])) for s in raw["steps"]),
        created_at=_req_time(raw["created_at"]),
        send_at=_time(raw["send_at"]),
        decision_id=raw["decision_id"],
        ruleset_version=raw["ruleset_version"],
        reasons=tuple(Reason(**r) for r in raw["reasons"]),
        step_index=raw["step_index"],
        attempts=tuple(Attempt(**{**a, "at": _req_time(a["at"])}) for a in raw["attempts"]),
        history=tuple(
            StatusChange(_req_time(h["at"]), DispatchState(h["state"]), h["detail"]) for h in raw["history"]
        ),
        escalate_after_s=raw["escalate_after_s"],
        version=raw["version"],
        redecide=raw["redecide"],
        dead_lettered=raw["dead_lettered"],
        recheck=raw.get("recheck", False),  # absent in records stored before it existed
        lane=raw.get("lane", "normal"),
        traceparent=raw.get("traceparent", ""),
    )


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, frozenset | set):
        return sorted(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def _req_time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)
