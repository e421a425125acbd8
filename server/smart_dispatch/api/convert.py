"""Protobuf <-> domain conversion of decisions and what surrounds them.

In: `DecideRequest` (its Struct values checked for depth, string length and finite numbers,
its timestamps for range) and `ReportEventRequest`. Out: `DecideResponse` (plan, reasons,
caps, explanation), `GetDecisionResponse` (a decision log entry with the dispatch's attempts
and the reported events, merged by time), `RulesStatus`, `StatsRow`; and the timestamp helpers
the other converters share. Dispatches and inbox items: dispatch_convert.py; preferences:
preferences_convert.py. A bad value raises `InvalidRequestError` naming its field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.behaviour.base import EventKind
from smart_dispatch.decide.validate import MAX_STRUCT_DEPTH, MAX_STRUCT_STRING_LENGTH
from smart_dispatch.decisionlog.entry import decision_of
from smart_dispatch.decisionlog.stats import StatsRow
from smart_dispatch.dispatch.model import DispatchRecord
from smart_dispatch.domain import DecideRequest, Decision, Explanation, Message, Recipient, Verdict
from smart_dispatch.errors import InvalidRequestError, quote
from smart_dispatch.events import ReportedEvent
from smart_dispatch.rules.active import RulesStatus

_VERDICTS = {
    Verdict.SEND: pb.VERDICT_SEND,
    Verdict.DEFER: pb.VERDICT_DEFER,
    Verdict.SUPPRESS: pb.VERDICT_SUPPRESS,
}
LIST_KINDS = {pb.LIST_KIND_ALLOW: "allow", pb.LIST_KIND_DENY: "deny"}
EVENT_KINDS: dict[int, EventKind] = {
    pb.EVENT_KIND_DELIVERED: "delivered",
    pb.EVENT_KIND_OPENED: "opened",
    pb.EVENT_KIND_CLICKED: "clicked",
    pb.EVENT_KIND_BOUNCED: "bounced",
    pb.EVENT_KIND_FAILED: "failed",
    pb.EVENT_KIND_UNSUBSCRIBED: "unsubscribed",
    pb.EVENT_KIND_ACTIVE: "active",
    pb.EVENT_KIND_CONVERTED: "converted",
}
LIST_KIND_OF = {name: kind for kind, name in LIST_KINDS.items()}


def decide_request(msg: pb.DecideRequest) -> DecideRequest:
    m, r = msg.message, msg.recipient
    message = Message(
        id=m.id,
        category=m.category,
        labels=dict(m.labels),
        template=m.template,
        data=_struct(m.data, "message.data") if m.HasField("data") else {},
        channels=tuple(m.channels),
        not_after=checked_time(m.not_after, "message.not_after") if m.HasField("not_after") else None,
    )
    recipient = Recipient(
        user_id=r.user_id,
        timezone=r.timezone,
        locale=r.locale,
        addresses=dict(r.addresses),
        opted_out=frozenset(r.opted_out),
        preferred=tuple(r.preferred),
        attributes=_struct(r.attributes, "recipient.attributes") if r.HasField("attributes") else {},
    )
    at = checked_time(msg.at, "at") if msg.HasField("at") else None
    return DecideRequest(
        message=message, recipient=recipient, dry_run=msg.dry_run, explain=msg.explain, at=at
    )


def reported_event(msg: pb.ReportEventRequest) -> ReportedEvent:
    kind = EVENT_KINDS.get(msg.kind)
    if kind is None:
        raise InvalidRequestError("kind", "must be one of EVENT_KIND_DELIVERED .. EVENT_KIND_CONVERTED")
    if not math.isfinite(msg.value) or (msg.value and kind != "converted"):
        raise InvalidRequestError("value", "a finite number, only for EVENT_KIND_CONVERTED")
    at = checked_time(msg.occurred_at, "occurred_at") if msg.HasField("occurred_at") else datetime.now(UTC)
    return ReportedEvent(msg.user_id, kind, at, msg.message_id, msg.channel, msg.value)


def decide_response(decision: Decision) -> pb.DecideResponse:
    out = pb.DecideResponse(
        decision_id=decision.decision_id,
        verdict=_VERDICTS[decision.verdict],
        matched_rules=decision.matched_rules,
        ruleset_version=decision.ruleset_version,
        lane=decision.lane,
    )
    for index, step in enumerate(decision.steps):
        added = out.steps.add(channel=step.channel, address=step.address, send_at=timestamp(step.send_at))
        if decision.escalate_after_s and index + 1 < len(decision.steps):
            added.escalate_after.CopyFrom(_duration(decision.escalate_after_s))
    if decision.send_at is not None:
        out.send_at.CopyFrom(timestamp(decision.send_at))
    for reason in decision.reasons:
        out.reasons.add(code=reason.code, rule=reason.rule, detail=reason.detail)
    for cap in decision.caps:
        state = out.caps.add(name=cap.name, limit=cap.limit, used=cap.used, remaining=cap.remaining)
        state.window.CopyFrom(_duration(cap.window_s))
        if cap.reset_at is not None:
            state.reset_at.CopyFrom(timestamp(cap.reset_at))
    if decision.explanation is not None:
        out.explanation.CopyFrom(_explanation(decision.explanation))
    return out


def decision_lookup(entry: Mapping[str, Any], record: DispatchRecord | None = None) -> pb.GetDecisionResponse:
    """A decision log entry (addresses already masked) with what happened to it later: the
    dispatch's attempts when `record` carries it out, and the events reported about it."""
    out = pb.GetDecisionResponse(
        decision=decide_response(decision_of(entry)),
        message_id=entry["message_id"],
        category=entry["category"],
        decided_at=timestamp(datetime.fromisoformat(entry["ts"])),
        dry_run=entry["dry_run"],
        trace_id=entry.get("trace_id", ""),
    )
    history: list[tuple[datetime, pb.DecisionEvent]] = []
    if record is not None:
        out.dispatch_id = record.dispatch_id
        for attempt in record.attempts:
            detail = attempt.outcome + (f": {attempt.error}" if attempt.error else "")
            event = pb.DecisionEvent(
                at=timestamp(attempt.at), kind="attempt", channel=attempt.channel,
                provider=attempt.provider, detail=detail,
            )  # fmt: skip
            history.append((attempt.at, event))
    for raw in entry.get("history", ()):
        if raw["kind"] in ("attempt",) and record is not None:
            continue  # the dispatch record has them, with their errors
        at = datetime.fromisoformat(raw["at"])
        event = pb.DecisionEvent(
            at=timestamp(at), kind=raw["kind"], channel=raw.get("channel", ""),
            provider=raw.get("provider", ""), detail=raw.get("detail", ""),
        )  # fmt: skip
        history.append((at, event))
    out.history.extend(event for _, event in sorted(history, key=lambda pair: pair[0]))
    return out


def _explanation(explanation: Explanation) -> pb.Explanation:
    out = pb.Explanation(
        ranked_channels=explanation.ranked_channels,
        learned_choice=explanation.learned,
        learned_send_time=explanation.send_times,
    )
    out.facts.update(explanation.facts)
    for rule in explanation.rules:
        out.rules.add(
            name=rule.name,
            matched=rule.matched,
            priority=rule.priority,
            location=rule.location,
            shadow=rule.shadow,
        )
    for effect in explanation.effects:
        out.effects.add(rule=effect.rule, effect=effect.effect, value=effect.value, shadow=effect.shadow)
    return out


def rules_status(status: RulesStatus) -> pb.RulesStatus:
    out = pb.RulesStatus(
        version=status.version,
        directory=str(status.directory),
        files=status.files,
        rule_count=status.rule_count,
        reloads=status.reloads,
        failures_since_load=status.failures_since_load,
    )
    if status.loaded_at is not None:
        out.loaded_at.CopyFrom(timestamp(status.loaded_at))
    if status.last_error is not None:
        error = status.last_error
        out.last_error.CopyFrom(
            pb.RuleLoadError(file=error.file, line=error.line, message=error.message, at=timestamp(error.at))
        )
    return out


def _struct(struct: struct_pb2.Struct, field: str, depth: int = 1) -> dict[str, Any]:
    if depth > MAX_STRUCT_DEPTH:
        raise InvalidRequestError(field, f"nested deeper than {MAX_STRUCT_DEPTH} levels")
    return {key: _value(value, field, key, depth) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value, parent: str, key: str | int, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        text = value.string_value
        if len(text) > MAX_STRUCT_STRING_LENGTH:
            raise InvalidRequestError(
                _path(parent, key), f"longer than {MAX_STRUCT_STRING_LENGTH:,} characters"
            )
        return text
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidRequestError(_path(parent, key), "must be a finite number")
        return value.number_value
    if kind == "struct_value":
        return _struct(value.struct_value, _path(parent, key), depth + 1)
    if kind == "list_value":
        if depth >= MAX_STRUCT_DEPTH:
            raise InvalidRequestError(_path(parent, key), f"nested deeper than {MAX_STRUCT_DEPTH} levels")
        field = _path(parent, key)
        return [_value(item, field, i, depth + 1) for i, item in enumerate(value.list_value.values)]
    if kind == "bool_value":
        return value.bool_value
    return None


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if len(key) <= 40 else f"{parent}[{quote(key)}]"


def checked_time(ts: timestamp_pb2.Timestamp, field: str) -> datetime:
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequestError(field, f"timestamp out of range: {exc}") from exc


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    """An aware datetime as a Timestamp, exactly (integer arithmetic; FromDatetime is slower)."""
    delta = when - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def stats_row(row: StatsRow) -> pb.StatsRow:
    sums = row.sums
    out = pb.StatsRow(conversion_value=sums["conversion_value"], cost=sums["cost"])
    for dimension, value in row.key.items():
        setattr(out, dimension, value)
    for name in _COUNTED:
        setattr(out, name, round(sums[name]))
    out.suppressed.update({reason: round(n) for reason, n in row.suppressed.items()})
    out.deferred.update({reason: round(n) for reason, n in row.deferred.items()})
    return out


_COUNTED = (
    "decided",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "converted",
    "bounced",
    "unsubscribed",
    "failed",
)
