"""The decision pipeline: validate -> facts -> rules -> rank -> timing -> caps -> plan.

Pure except for two awaits: the list-membership read (facts) and the cap reservation (one store
round trip; a second one only when a cap defers the message into quiet hours).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from smart_dispatch.counters.base import CapSpec, CounterStore, ReserveOutcome, ReserveRequest
from smart_dispatch.decide import reasons as R
from smart_dispatch.decide.draft import PlanDraft, fold
from smart_dispatch.decide.facts import build_facts, reachable_channels
from smart_dispatch.decide.rank import fallback_channels, rank_channels
from smart_dispatch.decide.timing import quiet_hours_end
from smart_dispatch.decide.validate import validate_request
from smart_dispatch.domain import CapState, DecideRequest, Decision, PlanStep, Reason, Verdict
from smart_dispatch.errors import StoreUnavailableError
from smart_dispatch.lists.base import ListStore
from smart_dispatch.rules.active import ActiveRules, RulesVersion

#: A reservation this far in the future (seconds) makes a repeated message a DEFER, not a SEND.
_FUTURE_TOLERANCE_S = 1.0
_DEFER_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """What to do when the store cannot answer: categories in `fail_open` are sent anyway
    (reason `store_unavailable`), all others fail the call with UNAVAILABLE."""

    fail_open: frozenset[str] = frozenset({"otp", "alert"})


@dataclass(slots=True)
class _Trace:
    reasons: list[Reason] = field(default_factory=list)
    caps: tuple[CapState, ...] = ()

    def add(self, code: str, rule: str = "", detail: str = "") -> None:
        self.reasons.append(Reason(code, rule, detail))


class Decider:
    """Turns a `DecideRequest` into a `Decision`. One instance per server; safe to call
    concurrently from one event loop."""

    def __init__(
        self,
        rules: ActiveRules,
        counters: CounterStore,
        lists: ListStore,
        failure_policy: FailurePolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._rules = rules
        self._counters = counters
        self._lists = lists
        self._failure = failure_policy or FailurePolicy()
        self._clock = clock

    async def decide(self, request: DecideRequest) -> Decision:
        version = self._rules.current()
        zone = validate_request(request, version.ruleset.categories)
        now = self._clock()
        trace = _Trace()
        message, recipient = request.message, request.recipient

        memberships = await self._memberships(request, trace)
        if "deny" in memberships:
            trace.add(R.DENY_LISTED, detail="recipient is on the deny list")
            return self._plan(version, Verdict.SUPPRESS, [], None, trace, ())

        reachable = reachable_channels(message, recipient)
        facts = build_facts(request, now, zone, memberships, reachable)
        fired = version.compiled.matches(facts)
        draft = fold([version.by_name[name] for name in fired])

        if draft.suppress is not None:
            trace.add(R.SUPPRESSED_BY_RULE, draft.source["suppress"], draft.suppress)
            return self._plan(version, Verdict.SUPPRESS, [], None, trace, fired)
        ranked = rank_channels(reachable, draft, recipient.preferred)
        if not ranked:
            trace.add(R.NO_REACHABLE_CHANNEL, detail=_unreachable_detail(reachable))
            return self._plan(version, Verdict.SUPPRESS, [], None, trace, fired)

        send_at = self._after_quiet_hours(now, zone, draft, trace)
        if send_at is None:
            return self._plan(version, Verdict.SUPPRESS, [], None, trace, fired)
        if _past_deadline(request, send_at, trace):
            return self._plan(version, Verdict.SUPPRESS, [], None, trace, fired)
        deferred = send_at > now
        channel, send_at, deferred = await self._apply_caps(
            request, version, draft, ranked, zone, send_at, deferred, memberships, trace
        )
        if channel is None or send_at is None:
            return self._plan(version, Verdict.SUPPRESS, [], None, trace, fired)
        if _past_deadline(request, send_at, trace):
            return self._plan(version, Verdict.SUPPRESS, [], None, trace, fired)

        trace.reasons.insert(
            0, Reason(R.CHANNEL_SELECTED, draft.source.get(f"prefer:{channel}", ""), channel)
        )
        channels = [channel, *fallback_channels(channel, ranked, draft)]
        steps = [PlanStep(c, recipient.addresses[c], send_at) for c in channels]
        verdict = Verdict.DEFER if deferred else Verdict.SEND
        return self._plan(version, verdict, steps, send_at, trace, fired)

    async def _memberships(self, request: DecideRequest, trace: _Trace) -> frozenset[str]:
        try:
            return await self._lists.memberships(request.recipient.user_id)
        except StoreUnavailableError:
            if request.message.category not in self._failure.fail_open:
                raise
            trace.add(R.STORE_UNAVAILABLE, detail="list membership unknown; category fails open")
            return frozenset()

    def _after_quiet_hours(
        self, at: datetime, zone: ZoneInfo, draft: PlanDraft, trace: _Trace
    ) -> datetime | None:
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

    async def _apply_caps(
        self,
        request: DecideRequest,
        version: RulesVersion,
        draft: PlanDraft,
        ranked: list[str],
        zone: ZoneInfo,
        send_at: datetime,
        deferred: bool,
        memberships: frozenset[str],
        trace: _Trace,
    ) -> tuple[str | None, datetime | None, bool]:
        """Reserve the caps of the best channel that has room; returns (channel, send_at,
        deferred), channel None when the message must be suppressed."""
        caps = [version.ruleset.caps[name] for name in draft.caps]
        if not caps:
            return ranked[0], send_at, deferred
        if "allow" in memberships:
            trace.add(R.ALLOW_LISTED, detail="caps bypassed")
            return ranked[0], send_at, deferred
        if draft.bypass_caps:
            trace.add(R.CAPS_BYPASSED, draft.source.get("bypass_caps", ""))
            return ranked[0], send_at, deferred

        candidates = ranked if draft.on_cap == "next_channel" else ranked[:1]
        options = tuple(tuple(c for c in caps if c.applies_to(ch)) for ch in candidates)
        at_s = send_at.timestamp() if deferred else None
        outcome = await self._reserve(request, options, at_s, trace)
        if outcome is None:  # store down, category fails open
            return ranked[0], send_at, deferred
        trace.caps = _cap_states(outcome)
        for option, channel in zip(outcome.options, candidates, strict=False):
            if not option.allowed:
                full = [u.cap.name for u in option.usages if u.used >= u.cap.limit]
                trace.add(R.CAP_EXCEEDED, draft.source.get("on_cap", ""), f"{channel}: {', '.join(full)}")
        if outcome.chosen is not None:
            return self._reserved(outcome, candidates, send_at, deferred, trace)
        if draft.on_cap != "defer":
            return None, None, False
        return await self._defer_for_caps(request, draft, candidates[0], options[0], outcome, zone, trace)

    async def _defer_for_caps(
        self,
        request: DecideRequest,
        draft: PlanDraft,
        channel: str,
        option: tuple[CapSpec, ...],
        outcome: ReserveOutcome,
        zone: ZoneInfo,
        trace: _Trace,
    ) -> tuple[str | None, datetime | None, bool]:
        """Move the message to the earliest instant every cap (and quiet hours) allows."""
        for _ in range(_DEFER_ATTEMPTS):
            retry_s = outcome.options[0].retry_at_s
            assert retry_s is not None
            retry = datetime.fromtimestamp(retry_s, UTC)
            trace.add(
                R.DEFERRED_BY_CAP, draft.source.get("on_cap", ""), f"caps allow again at {retry.isoformat()}"
            )
            at = self._after_quiet_hours(retry, zone, draft, trace)
            if at is None:
                return None, None, False
            not_after = request.message.not_after
            if request.dry_run or (not_after is not None and at > not_after):
                return channel, at, True
            again = await self._reserve(request, (option,), at.timestamp(), trace)
            if again is None:
                return channel, at, True
            trace.caps = _cap_states(again)
            if again.chosen is not None:
                return self._reserved(again, [channel], at, True, trace)
            outcome = again
        trace.add(R.CAP_EXCEEDED, detail="caps kept filling up while deferring; giving up")
        return None, None, False

    def _reserved(
        self, outcome: ReserveOutcome, candidates: list[str], send_at: datetime, deferred: bool, trace: _Trace
    ) -> tuple[str, datetime, bool]:
        assert outcome.chosen is not None
        channel = candidates[outcome.chosen]
        if outcome.reserved_at_s is None:  # dry run: nothing reserved
            return channel, send_at, deferred
        # The reservation's instant is the send instant (the store's clock is the cap clock).
        reserved = datetime.fromtimestamp(outcome.reserved_at_s, UTC)
        if outcome.duplicate:
            trace.add(R.DUPLICATE, detail="message id already decided; reusing its reservation")
            return channel, reserved, outcome.reserved_at_s > outcome.now_s + _FUTURE_TOLERANCE_S
        return channel, reserved, deferred

    async def _reserve(
        self,
        request: DecideRequest,
        options: tuple[tuple[CapSpec, ...], ...],
        at_s: float | None,
        trace: _Trace,
    ) -> ReserveOutcome | None:
        reserve = ReserveRequest(
            request.recipient.user_id, request.message.id, options, at_s, request.dry_run
        )
        try:
            return await self._counters.reserve(reserve)
        except StoreUnavailableError:
            if request.message.category not in self._failure.fail_open:
                raise
            trace.add(R.STORE_UNAVAILABLE, detail="caps not checked; category fails open")
            return None

    @staticmethod
    def _plan(
        version: RulesVersion,
        verdict: Verdict,
        steps: list[PlanStep],
        send_at: datetime | None,
        trace: _Trace,
        fired: list[str] | tuple[str, ...],
    ) -> Decision:
        return Decision(
            decision_id=uuid.uuid4().hex,
            verdict=verdict,
            steps=tuple(steps),
            send_at=send_at,
            reasons=tuple(trace.reasons),
            matched_rules=tuple(fired),
            caps=trace.caps,
            ruleset_version=version.version,
        )


def _cap_states(outcome: ReserveOutcome) -> tuple[CapState, ...]:
    option = outcome.options[-1]
    return tuple(
        CapState(
            name=u.cap.name,
            limit=u.cap.limit,
            window_s=u.cap.window_s,
            used=u.used,
            remaining=u.remaining,
            reset_at=None if u.reset_at_s is None else datetime.fromtimestamp(u.reset_at_s, UTC),
        )
        for u in option.usages
    )


def _past_deadline(request: DecideRequest, send_at: datetime, trace: _Trace) -> bool:
    not_after = request.message.not_after
    if not_after is None or send_at <= not_after:
        return False
    trace.add(
        R.EXPIRED, detail=f"earliest send {send_at.isoformat()} is after not_after {not_after.isoformat()}"
    )
    return True


def _unreachable_detail(reachable: tuple[str, ...]) -> str:
    if not reachable:
        return "no channel has an address that is allowed and not opted out"
    return f"reachable channels {', '.join(reachable)} are all denied by rules"
