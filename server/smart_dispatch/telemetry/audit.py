"""The decision log file: one JSON line per decision (`SD_AUDIT_LOG`; `-` for stdout), the answer
to "why did this message go (or not go) this way?" after the fact, after restarts too
(`smart-dispatch why`: `find_in_log`, `render_why`).

A line is the entry the decision log in the store keeps (`decisionlog/entry.py` `log_entry`, see
docs/decision-log.md): verdict, reasons with their rules, caps, fired rules, the plan with masked
addresses, ruleset version, trace and span ids, the request without its personal parts and what
the decision read. The user id is a keyed pseudonym (`SD_LOG_KEY`); message data never appears.
It begins:

    {"ts": "2026-11-25T22:50:00.120000+00:00", "decision_id": "3f…", "message_id": "login-1",
     "category": "otp", "user": "hmac:…", "dry_run": false, "ruleset_version": "9c…",
     "verdict": "send", "fired_rules": ["otp"],
     "reasons": [{"code": "channel_selected", "rule": "otp", "detail": "sms"}],
     "caps": [{"name": "…", "limit": 3, "window_s": 86400.0, "used": 1, "remaining": 2, "reset_at": "…"}],
     "plan": [{"channel": "sms", "address": "+1****00", "send_at": "…"}], "send_at": "…", …}

`GetDecision` reads the decision log in the store (decisionlog/), not this file.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from smart_dispatch.decisionlog import entry as decision_log  # a module: imported in a cycle
from smart_dispatch.telemetry.base import DecisionMade, TelemetryHooks
from smart_dispatch.telemetry.redact import pseudonym_key

log = logging.getLogger(__name__)
STDOUT = ("-", "stdout")


class AuditLog(TelemetryHooks):
    """Writes every decision to `sink`, one JSON line each (no sink: nothing is written). Its
    `key` pseudonymises user ids here and in the decision log in the store."""

    def __init__(self, sink: TextIO | None = None, key: bytes = b"", *, owns_sink: bool = False) -> None:
        self.key = key or pseudonym_key("")
        self._sink = sink
        self._owns_sink = owns_sink

    @classmethod
    def to_target(cls, target: str, key: bytes = b"") -> AuditLog:
        """`target`: a file path (appended to, directories created), `-` / `stdout`, or "" for
        no log."""
        if not target:
            return cls(None, key)
        if target in STDOUT:
            return cls(sys.stdout, key)
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path.open("a", encoding="utf-8", buffering=1), key, owns_sink=True)

    def on_decision(self, event: DecisionMade) -> None:
        if self._sink is None:
            return
        record = decision_log.log_entry(event, self.key)
        self._sink.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        self._sink.flush()

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
