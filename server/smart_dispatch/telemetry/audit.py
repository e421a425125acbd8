"""The decision log file: one JSON line per decision (`SD_AUDIT_LOG`), the answer to "why did
this message go (or not go) this way?" after the fact (`smart-dispatch why`).

A line (keys in this order; addresses masked, the user id pseudonymised, no message data):

    {"ts": "2026-11-25T22:50:00.120000+00:00", "decision_id": "3f…", "message_id": "login-1",
     "category": "otp", "user": "hmac:…", "dry_run": false, "ruleset_version": "9c…",
     "verdict": "send", "fired_rules": ["otp"],
     "reasons": [{"code": "channel_selected", "rule": "otp", "detail": "sms"}],
     "caps": [{"name": "…", "limit": 3, "window_s": 86400.0, "used": 1, "remaining": 2, "reset_at": "…"}],
     "plan": [{"channel": "sms", "address": "+1****00", "send_at": "…"}],
     "send_at": "…", "trace_id": "4bf9…", "span_id": "00f0…"}

The sink is a file (appended, one flushed line per decision), stdout (`-`), or none. Beside it an
in-memory index of masked entries, bounded in bytes (`SD_AUDIT_INDEX_BYTES`, least recently
decided message ids dropped first), links the sender pool's spans to the trace of the decision
(`Telemetry.continue_decision`); `find_in_log` answers `smart-dispatch why` from the file,
after restarts too (`GetDecision` reads the decision log in the store: decisionlog/). An entry
keeps no request: only the message id, category, pseudonymised user, masked plan and the
decision's reasons and caps.
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

from smart_dispatch.decisionlog import entry as decision_log  # a module: imported in a cycle
from smart_dispatch.domain import Decision, PlanStep
from smart_dispatch.telemetry.base import DecisionMade, TelemetryHooks
from smart_dispatch.telemetry.redact import hash_user, mask_address, pseudonym_key

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
    def of(cls, event: DecisionMade, key: bytes) -> AuditEntry:
        decision = event.decision
        steps = tuple(
            PlanStep(s.channel, mask_address(s.channel, s.address), s.send_at) for s in decision.steps
        )
        message, recipient = event.request.message, event.request.recipient
        return cls(
            decision=replace(decision, steps=steps, explanation=None, seen=None),
            message_id=message.id,
            category=message.category,
            user=hash_user(recipient.user_id, key),
            decided_at=event.at,
            dry_run=event.request.dry_run,
            trace_id=event.trace_id,
            span_id=event.span_id,
            sampled=event.sampled,
        )

    def size_bytes(self) -> int:
        """What the entry holds in memory, about: its objects plus every string it keeps."""
        d = self.decision
        strings = len(self.message_id) + len(self.category) + len(self.user) + len(d.decision_id)
        strings += sum(len(r.code) + len(r.rule) + len(r.detail) for r in d.reasons)
        strings += sum(len(s.channel) + len(s.address) for s in d.steps)
        strings += sum(len(c.name) for c in d.caps) + sum(len(name) for name in d.matched_rules)
        objects = 8 + 2 * len(d.reasons) + 3 * len(d.steps) + 3 * len(d.caps) + len(d.matched_rules)
        return _OBJECT_BYTES * objects + strings


#: What one small Python object of an entry costs, about (an object header, a slot, a pointer).
_OBJECT_BYTES = 96
DEFAULT_INDEX_BYTES = 16 * 1024 * 1024


class AuditLog(TelemetryHooks):
    """Writes every decision to `sink` (if any) and keeps the latest masked entries that fit
    in `index_bytes` for lookups (0: none)."""

    def __init__(
        self,
        sink: TextIO | None = None,
        index_bytes: int = DEFAULT_INDEX_BYTES,
        key: bytes = b"",
        *,
        owns_sink: bool = False,
    ) -> None:
        self.key = key or pseudonym_key("")
        self._sink = sink
        self._owns_sink = owns_sink
        self._index: OrderedDict[str, tuple[AuditEntry, int]] = OrderedDict()
        self._index_limit = max(0, index_bytes)
        self._index_bytes = 0

    @property
    def index_bytes(self) -> int:
        """Bytes the index holds now (by `AuditEntry.size_bytes`)."""
        return self._index_bytes

    @classmethod
    def to_target(cls, target: str, index_bytes: int = DEFAULT_INDEX_BYTES, key: bytes = b"") -> AuditLog:
        """`target`: a file path (appended to, directories created), `-` / `stdout`, or "" for
        no log (the in-memory index still answers lookups)."""
        if not target:
            return cls(None, index_bytes, key)
        if target in STDOUT:
            return cls(sys.stdout, index_bytes, key)
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path.open("a", encoding="utf-8", buffering=1), index_bytes, key, owns_sink=True)

    def on_decision(self, event: DecisionMade) -> None:
        if not self._index_limit and self._sink is None:
            return
        entry = AuditEntry.of(event, self.key)
        if self._index_limit:
            self._remember(entry)
        if self._sink is not None:
            record = decision_log.log_entry(event, self.key)
            self._sink.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            self._sink.flush()

    def _remember(self, entry: AuditEntry) -> None:
        size = entry.size_bytes()
        previous = self._index.pop(entry.message_id, None)
        if previous is not None:
            self._index_bytes -= previous[1]
        if size > self._index_limit:
            return
        self._index[entry.message_id] = (entry, size)
        self._index_bytes += size
        while self._index_bytes > self._index_limit:
            _, (_, dropped) = self._index.popitem(last=False)
            self._index_bytes -= dropped

    def lookup(self, message_id: str) -> AuditEntry | None:
        """The latest decision for `message_id` still in the index."""
        kept = self._index.get(message_id)
        return None if kept is None else kept[0]

    def close(self) -> None:
        if self._owns_sink and self._sink is not None:
            self._sink.close()
        self._sink = None


def find_in_log(path: Path, message_id: str) -> dict[str, Any] | None:
    """The latest record for `message_id` in a decision log file (malformed lines skipped)."""
    found = None
    for record in log_records(path):
        if record.get("message_id") == message_id:
            found = record
    return found


def log_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a decision log file, in file order (malformed lines skipped)."""
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
