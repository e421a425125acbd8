"""Step 8 of the pipeline (pipeline.py): reserve the caps of the best channel that has room, or
apply the rule's `on_cap` (defer, next_channel, digest, drop).

One store round trip in the common case (none for an allow-listed person or `bypass_caps`).
More only when a cap holds the message back: `next_channel` with every channel full reserves
once more, at the instant the first one frees up; a deferred instant that falls in quiet hours
is given back (a refund) and reserved again from the end of the window, at most
`_DEFER_ATTEMPTS` times. When the store cannot answer, a category in `fail_open` goes on
unchecked (reason `store_unavailable`); any other fails with `StoreUnavailableError`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from smart_dispatch.counters.base import CapSpec, CounterStore, ReserveOutcome, ReserveRequest
from smart_dispatch.decide import reasons as R
from smart_dispatch.decide.draft import PlanDraft
from smart_dispatch.decide.schedule import after_quiet_hours
from smart_dispatch.decide.trace import Trace
from smart_dispatch.domain import CapState, DecideRequest
from smart_dispatch.errors import StoreUnavailableError
from smart_dispatch.telemetry import Telemetry

#: A repeated message whose reservation is this far in the future (s) is a DEFER, not a SEND.
_FUTURE_TOLERANCE_S = 1.0
_DEFER_ATTEMPTS = 3
SHADOW_PREFIX = "shadow:"


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """What to do when the store cannot answer: categories in `fail_open` are sent anyway
    (reason `store_unavailable`), all others fail the call with UNAVAILABLE."""

    fail_open: frozenset[str] = frozenset({"otp", "alert"})


@dataclass(frozen=True, slots=True)
class Placement:
    """The chosen channel and instant; `channel is None` means suppress; `digest`: over a cap,
    to be folded with the others into one message at `send_at` (`on_cap: digest`)."""

    channel: str | None
    send_at: datetime | None
    deferred: bool
    digest: bool = False


class CapStep:
    def __init__(
        self, counters: CounterStore, failure: FailurePolicy, telemetry: Telemetry | None = None
    ) -> None:
        self._counters = counters
        self._failure = failure
        self._telemetry = telemetry or Telemetry.noop()

    async def place(
        self,
        request: DecideRequest,
        caps: list[CapSpec],
        draft: PlanDraft,
        ranked: list[str],
        zone: ZoneInfo,
        send_at: datetime,
        deferred: bool,
        memberships: frozenset[str],
        trace: Trace,
        shadow: bool = False,
    ) -> Placement:
        """Reserve for `ranked[0]` (or the next channels, with on_cap next_channel). In shadow
        mode caps are counted under `shadow:<name>` so they never affect enforcement."""
        if not caps:
            return Placement(ranked[0], send_at, deferred)
        if "allow" in memberships:
            trace.add(R.ALLOW_LISTED, detail="caps bypassed")
            return Placement(ranked[0], send_at, deferred)
        if draft.bypass_caps:
            trace.add(R.CAPS_BYPASSED, draft.source.get("bypass_caps", ""))
            return Placement(ranked[0], send_at, deferred)
        if shadow:
            caps = [replace(cap, name=SHADOW_PREFIX + cap.name) for cap in caps]

        candidates = ranked if draft.on_cap == "next_channel" else ranked[:1]
        options = tuple(tuple(c for c in caps if c.applies_to(ch)) for ch in candidates)
        at_s = send_at.timestamp() if deferred else None
        outcome = await self._reserve(request, options, at_s, trace, defer=draft.on_cap == "defer")
        if outcome is None:  # store down, category fails open
            return Placement(ranked[0], send_at, deferred)
        trace.caps = cap_states(outcome)
        rule = draft.source.get("on_cap", "")
        for option, channel in zip(outcome.options, candidates, strict=False):
            if not option.allowed:
                full = [u.cap.name for u in option.usages if u.used >= u.cap.limit]
                self._telemetry.caps_refused(channel, full)
                trace.add(R.CAP_EXCEEDED, rule, f"{channel}: {', '.join(full)}")
        if outcome.chosen is not None and not outcome.deferred:
            return self._reserved(outcome, candidates, send_at, deferred, trace)
        if draft.on_cap == "next_channel":
            return await self._next_free(
                request, draft, candidates, options, outcome, send_at, deferred, zone, trace
            )
        if draft.on_cap == "digest":
            return self._digest(draft, candidates[0], outcome, zone, trace)
        if draft.on_cap != "defer":
            return Placement(None, None, False)
        return await self._deferred(request, draft, candidates[0], options[0], outcome, zone, trace)

    def _digest(
        self, draft: PlanDraft, channel: str, outcome: ReserveOutcome, zone: ZoneInfo, trace: Trace
    ) -> Placement:
        """`on_cap: digest`: nothing is reserved; the message waits, with every other one over
        the cap, for the instant the cap has room again (moved past quiet hours), to go as ONE
        message then (the dispatcher folds them: `Decision.digest_until`)."""
        retry_s = outcome.options[0].retry_at_s
        assert retry_s is not None, "a refused option always has a retry instant"
        when = after_quiet_hours(datetime.fromtimestamp(retry_s, UTC), zone, draft, trace)
        if when is None:
            return Placement(None, None, False)
        trace.add(
            R.DIGEST_BY_CAP, draft.source.get("on_cap", ""), f"with the others until {when.isoformat()}"
        )
        return Placement(channel, when, True, digest=True)

    async def _next_free(
        self,
        request: DecideRequest,
        draft: PlanDraft,
        candidates: list[str],
        options: tuple[tuple[CapSpec, ...], ...],
        outcome: ReserveOutcome,
        send_at: datetime,
        deferred: bool,
        zone: ZoneInfo,
        trace: Trace,
    ) -> Placement:
        """`on_cap: next_channel` with every channel full: defer to the channel whose caps free
        up first (suppressed only when that is past the message's deadline). One more round
        trip: the reservation at that instant, as `defer` makes it."""
        refused = [(o.retry_at_s, i) for i, o in enumerate(outcome.options) if o.retry_at_s is not None]
        if not refused:
            return Placement(None, None, False)
        index = min(refused)[1]
        at_s = send_at.timestamp() if deferred else None
        again = await self._reserve(request, (options[index],), at_s, trace, defer=True)
        if again is None:  # store down, category fails open (as `place` does)
            return Placement(candidates[0], send_at, deferred)
        if again.chosen is not None and not again.deferred:  # it freed up meanwhile
            return self._reserved(again, [candidates[index]], send_at, deferred, trace)
        return await self._deferred(request, draft, candidates[index], options[index], again, zone, trace)

    async def _deferred(
        self,
        request: DecideRequest,
        draft: PlanDraft,
        channel: str,
        option: tuple[CapSpec, ...],
        outcome: ReserveOutcome,
        zone: ZoneInfo,
        trace: Trace,
    ) -> Placement:
        """The store deferred the message to the earliest instant its caps allow (or, for a dry
        run or a deadline, only said when). If quiet hours forbid that instant, take the slot
        back and reserve again from the end of the quiet window."""
        rule = draft.source.get("on_cap", "")
        for _ in range(_DEFER_ATTEMPTS):
            when_s = outcome.reserved_at_s if outcome.deferred else outcome.options[0].retry_at_s
            assert when_s is not None, "a refused option always has a retry instant"
            when = datetime.fromtimestamp(when_s, UTC)
            trace.add(R.DEFERRED_BY_CAP, rule, f"caps allow again at {when.isoformat()}")
            at = after_quiet_hours(when, zone, draft, trace)
            if not outcome.deferred or at == when:  # nothing (more) to reserve
                if at is None and outcome.deferred:
                    await self._counters.refund(request.recipient.user_id, request.message.id, option)
                return Placement(channel if at else None, at, True)
            await self._counters.refund(request.recipient.user_id, request.message.id, option)
            if at is None:
                return Placement(None, None, False)
            again = await self._reserve(request, (option,), at.timestamp(), trace, defer=True)
            if again is None:
                return Placement(channel, at, True)
            trace.caps = cap_states(again)
            if again.chosen is not None and not again.deferred:
                return self._reserved(again, [channel], at, True, trace)
            outcome = again
        trace.add(R.CAP_EXCEEDED, detail="no slot outside quiet hours found; giving up")
        await self._counters.refund(request.recipient.user_id, request.message.id, option)
        return Placement(None, None, False)

    @staticmethod
    def _reserved(
        outcome: ReserveOutcome, candidates: list[str], send_at: datetime, deferred: bool, trace: Trace
    ) -> Placement:
        assert outcome.chosen is not None
        channel = candidates[outcome.chosen]
        if outcome.reserved_at_s is None:  # dry run: nothing reserved
            return Placement(channel, send_at, deferred)
        # The reservation's instant is the send instant (the store's clock is the cap clock).
        reserved = datetime.fromtimestamp(outcome.reserved_at_s, UTC)
        if outcome.duplicate:
            trace.add(R.DUPLICATE, detail="message id already decided; reusing its reservation")
            return Placement(channel, reserved, outcome.reserved_at_s > outcome.now_s + _FUTURE_TOLERANCE_S)
        return Placement(channel, reserved, deferred)

    async def _reserve(
        self,
        request: DecideRequest,
        options: tuple[tuple[CapSpec, ...], ...],
        at_s: float | None,
        trace: Trace,
        *,
        defer: bool,
    ) -> ReserveOutcome | None:
        not_after = request.message.not_after
        reserve = ReserveRequest(
            request.recipient.user_id,
            request.message.id,
            options,
            at_s,
            request.dry_run,
            defer=defer,
            not_after_s=None if not_after is None else not_after.timestamp(),
            now_s=None if request.at is None else request.at.timestamp(),
        )
        names = sorted({cap.name for option in options for cap in option})
        attributes = {"smartdispatch.caps": names, "smartdispatch.dry_run": request.dry_run}
        try:
            with (
                self._telemetry.span("caps.reserve", attributes) as span,
                self._telemetry.store_call("counters.reserve"),
            ):
                outcome = await self._counters.reserve(reserve)
                span.set_attribute("smartdispatch.caps.allowed", outcome.chosen is not None)
                span.set_attribute("smartdispatch.caps.deferred", outcome.deferred)
                return outcome
        except StoreUnavailableError:
            if request.message.category not in self._failure.fail_open:
                raise
            trace.add(R.STORE_UNAVAILABLE, detail="caps not checked; category fails open")
            return None


def cap_states(outcome: ReserveOutcome) -> tuple[CapState, ...]:
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
