"""Telemetry hooks: a no-op base class and the frozen events it receives.

Metrics (metrics.py), the decision log file (audit.py) and the decision log in the store
(decisionlog/writer.py) are hooks; so may be anything an operator adds. Every event carries
what a hook may record and nothing it must not: no contact address leaves the core unmasked
except inside `DecisionMade.request`, which hooks mask themselves.
`call_hook` runs one hook and logs (never raises) what it raises: telemetry never fails a
decision or a send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from smart_dispatch.domain import DecideRequest, Decision

log = logging.getLogger(__name__)
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class DecisionMade:
    """A decision the pipeline returned. `trace_id` / `span_id` are hex ("" when untraced)."""

    request: DecideRequest
    decision: Decision
    at: datetime
    trace_id: str = ""
    span_id: str = ""
    sampled: bool = False


@dataclass(frozen=True, slots=True)
class CapsRefused:
    """Caps that refused a channel for one decision (names as in the rule files)."""

    channel: str
    caps: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SendAttempted:
    """One provider attempt of a dispatch. `outcome`: delivered | retryable_error |
    permanent_error."""

    dispatch_id: str
    message_id: str
    channel: str
    provider: str
    number: int
    outcome: str


@dataclass(frozen=True, slots=True)
class DeadLettered:
    dispatch_id: str
    message_id: str
    channel: str


@dataclass(frozen=True, slots=True)
class RulesLoaded:
    """One load of the rules directory: a new version, the same content, or a rejected one."""

    result: str  # loaded | unchanged | failed


@dataclass(frozen=True, slots=True)
class RpcFinished:
    """One RPC served. `code` is the gRPC status name (e.g. "OK", "INVALID_ARGUMENT")."""

    service: str
    method: str
    code: str
    duration_s: float


@dataclass(frozen=True, slots=True)
class StoreCallFinished:
    """One store round trip. `operation` e.g. "counters.reserve", "user_state.read"."""

    operation: str
    duration_s: float
    ok: bool


@dataclass(frozen=True, slots=True)
class Counted:
    """What the analytics counted: a reported event of `metric` kind (delivered, opened,
    clicked, converted, bounced, unsubscribed, failed) or `cost` of sends, on a channel."""

    metric: str
    channel: str
    amount: float = 1.0


class TelemetryHooks:
    """Override what you need; every method does nothing by default."""

    def on_decision(self, event: DecisionMade) -> None:
        """After every decision (Decide, Dispatch and re-decisions of deferred dispatches)."""

    def on_caps_refused(self, event: CapsRefused) -> None:
        """When caps refuse a channel (the decision may still go out another way or later)."""

    def on_send_attempt(self, event: SendAttempted) -> None:
        """After every provider attempt of the sender pool."""

    def on_dead_letter(self, event: DeadLettered) -> None:
        """When a dispatch fails on every channel."""

    def on_rules_load(self, event: RulesLoaded) -> None:
        """After every load of the rules directory (startup, watcher, ReloadRules)."""

    def on_rpc(self, event: RpcFinished) -> None:
        """After every RPC but health checks and reflection."""

    def on_store_call(self, event: StoreCallFinished) -> None:
        """After every timed store round trip."""

    def on_counted(self, event: Counted) -> None:
        """When the analytics count an event or a cost (batched, off the hot path)."""

    def close(self) -> None:
        """Release files and servers (at shutdown)."""


def call_hook(hook: Callable[[E], None], event: E) -> None:
    """Run `hook(event)`; log what it raises instead of raising it."""
    try:
        hook(event)
    except Exception:
        log.exception(
            "telemetry hook %s failed on %s", getattr(hook, "__qualname__", hook), type(event).__name__
        )
