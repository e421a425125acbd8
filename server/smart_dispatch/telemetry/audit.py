"""The decision log: one JSON line per decision, and the answer to "why did this message go
(or not go) this way?".

A line (keys in this order; addresses masked, the user id pseudonymised, no message data):

    {"ts": "2026-11-25T22:50:00.120000+00:00", "decision_id": "3f…", "message_id": "login-1",
     "category": "otp", "user": "sha256:…", "dry_run": false, "ruleset_version": "9c…",
     "verdict": "send", "fired_rules": ["otp"],
     "reasons": [{"code": "channel_selected", "rule": "otp", "detail": "sms"}],
     "caps": [{"name": "…", "limit": 3, "window_s": 86400.0, "used": 1, "remaining": 2, "reset_at": "…"}],
     "plan": [{"channel": "sms", "address": "+1555****100", "send_at": "…"}],
     "send_at": "…", "trace_id": "4bf9…", "span_id": "00f0…"}

The sink is a file (appended, one flushed line per decision), stdout (`-`), or none. Beside it a
bounded in-memory index (least recently decided message ids dropped first) answers
`GetDecision`; `find_in_log` answers `smart-dispatch why` from the file, after restarts too.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from smart_dispatch.domain import Decision, PlanStep
from smart_dispatch.telemetry.base import DecisionMade, TelemetryHooks
from smart_dispatch.telemetry.redact import hash_user, mask_address

log = logging.getLogger(__name__)
STDOUT = ("-", "stdout")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One decision as kept for lookups: addresses masked, no explanation (its facts hold the
    recipient's profile)."""

    decision: Decision
    message_id: str
    category: str
    user: str
    decided_at: datetime
    dry_run: bool
    trace_id: str = ""
    span_id: str = ""
    sampled: bool = False

    @classmethod
    def of(cls, event: DecisionMade) -> AuditEntry:
        decision = event.decision
        steps = tuple(
            PlanStep(s.channel, mask_address(s.channel, s.address), s.send_at) for s in decision.steps
        )
        message, recipient = event.request.message, event.request.recipient
        return cls(
            decision=replace(decision, steps=steps, explanation=None),
            message_id=message.id,
            category=message.category,
            user=hash_user(recipient.user_id),
            decided_at=event.at,
            dry_run=event.request.dry_run,
            trace_id=event.trace_id,
            span_id=event.span_id,
            sampled=event.sampled,
        )

    def record(self) -> dict[str, Any]:
        """The JSON-able decision log record."""
        d = self.decision
        return {
            "ts": self.decided_at.isoformat(),
            "decision_id": d.decision_id,
            "message_id": self.message_id,
            "category": self.category,
            "user": self.user,
            "dry_run": self.dry_run,
            "ruleset_version": d.ruleset_version,
            "verdict": d.verdict.value,
            "fired_rules": list(d.matched_rules),
            "reasons": [{"code": r.code, "rule": r.rule, "detail": r.detail} for r in d.reasons],
            "caps": [
                {
                    "name": c.name,
                    "limit": c.limit,
                    "window_s": c.window_s,
                    "used": c.used,
                    "remaining": c.remaining,
                    "reset_at": _iso(c.reset_at),
                }
                for c in d.caps
            ],
            "plan": [
                {"channel": s.channel, "address": s.address, "send_at": _iso(s.send_at)} for s in d.steps
            ],
            "send_at": _iso(d.send_at),
            "escalate_after_s": d.escalate_after_s,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
        }


class AuditLog(TelemetryHooks):
    """Writes every decision to `sink` (if any) and keeps the last `index_size` message ids."""

    def __init__(
        self, sink: TextIO | None = None, index_size: int = 10_000, *, owns_sink: bool = False
    ) -> None:
        self._sink = sink
        self._owns_sink = owns_sink
        # Events, not entries: masking and hashing are paid by lookups, not by every decision.
        self._index: OrderedDict[str, DecisionMade] = OrderedDict()
        self._index_size = max(0, index_size)

    @classmethod
    def to_target(cls, target: str, index_size: int = 10_000) -> AuditLog:
        """`target`: a file path (appended to, directories created), `-` / `stdout`, or "" for
        no log (the in-memory index still answers lookups)."""
        if not target:
            return cls(None, index_size)
        if target in STDOUT:
            return cls(sys.stdout, index_size)
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path.open("a", encoding="utf-8", buffering=1), index_size, owns_sink=True)

    def on_decision(self, event: DecisionMade) -> None:
        if self._index_size:
            if event.decision.explanation is not None:  # its facts hold the recipient's profile
                event = replace(event, decision=replace(event.decision, explanation=None))
            message_id = event.request.message.id
            self._index[message_id] = event
            self._index.move_to_end(message_id)
            if len(self._index) > self._index_size:
                self._index.popitem(last=False)
        if self._sink is not None:
            record = AuditEntry.of(event).record()
            self._sink.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._sink.flush()

    def lookup(self, message_id: str) -> AuditEntry | None:
        """The latest decision for `message_id` still in the index."""
        event = self._index.get(message_id)
        return None if event is None else AuditEntry.of(event)

    def decision_event(self, message_id: str) -> DecisionMade | None:
        """The latest decision event for `message_id` still in the index, unmasked (for this
        process's own use, e.g. its trace ids)."""
        return self._index.get(message_id)

    def close(self) -> None:
        if self._owns_sink and self._sink is not None:
            self._sink.close()
        self._sink = None


def find_in_log(path: Path, message_id: str) -> dict[str, Any] | None:
    """The latest record for `message_id` in a decision log file (malformed lines skipped)."""
    found = None
    for record in _records(path):
        if record.get("message_id") == message_id:
            found = record
    return found


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def render_why(record: dict[str, Any]) -> str:
    """A decision log record as an operator reads it."""
    out = [
        f"message {record.get('message_id')} ({record.get('category')}): {str(record.get('verdict')).upper()}"
        + (" [dry run]" if record.get("dry_run") else ""),
        f"  decided at {record.get('ts')}  decision {record.get('decision_id')}",
        f"  ruleset {record.get('ruleset_version')}  trace {record.get('trace_id') or '-'}",
        f"  fired rules: {', '.join(record.get('fired_rules') or []) or '(none)'}",
    ]
    plan = record.get("plan") or []
    out.append("  plan:" if plan else "  plan: nothing is sent")
    out += [f"    {i}. {s['channel']} {s['address']} at {s['send_at']}" for i, s in enumerate(plan, 1)]
    out.append("  reasons:")
    for r in record.get("reasons") or []:
        rule = f" [{r['rule']}]" if r.get("rule") else ""
        detail = f": {r['detail']}" if r.get("detail") else ""
        out.append(f"    - {r['code']}{rule}{detail}")
    caps = record.get("caps") or []
    if caps:
        out.append("  caps:")
        out += [
            f"    - {c['name']}: {c['used']}/{c['limit']} used in {c['window_s']:g}s, {c['remaining']} left"
            for c in caps
        ]
    return "\n".join(out)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()
