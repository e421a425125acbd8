"""The sender pool: workers that carry dispatches out.

Each worker claims one ready dispatch at a time and moves it one stage on:

- deferred (decided DEFER): decide again now, against the rules, lists and caps as they are now;
- a later step (fallback, escalation): decided again for its channel as it goes (deny list,
  opt-outs, quiet hours, that channel's caps): sent, deferred, or skipped for the next step;
- send the current plan step through its channel's provider (one attempt, bounded by the
  retry policy's `timeout_s`), the step's idempotency key on every attempt; the provider's
  message id of a delivered attempt is indexed to the dispatch, for its delivery receipts;
- over the provider's rate: scheduled for its next slot (not an attempt, not a failure);
- retryable failure (timeout, 5xx, 429): try again after a jittered backoff (never sooner than
  Retry-After) until the step's attempts (the channel's retry policy: providers file) are used
  up, while the retry budget allows; permanent failure, exhausted retries or budget, or an open
  circuit breaker: next plan step (fallback), the reason recorded;
- all steps failed: FAILED, dead-lettered with the full history, caps refunded;
- a permanent failure that says the address is dead (`ProviderError.invalid_address`: an
  unregistered push token) also records it with the person's preferences (events.py), so their
  next decisions skip that address;
- delivered with an escalation window: wait for engagement, then the next step unless opened.

A record is marked SENDING (one version after the claim) before the provider call; a worker that
dies mid-send leaves it so, and the reclaimed claim resumes it with the same idempotency key:
at-least-once towards providers, exactly-once effect at providers that honour the key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from opentelemetry.trace import SpanKind

from smart_dispatch.channels.base import Content, Delivery, Provider, ProviderError, SendResult
from smart_dispatch.decide.pipeline import Decider
from smart_dispatch.dispatch.model import Attempt, DispatchRecord, DispatchState
from smart_dispatch.dispatch.resilience import (
    CircuitBreaker,
    CircuitOpenError,
    RetryBudget,
    RetryPolicy,
    compute_backoff,
)
from smart_dispatch.dispatch.store import Claim, DispatchStore
from smart_dispatch.domain import DecideRequest, Verdict
from smart_dispatch.errors import SmartDispatchError, StoreUnavailableError
from smart_dispatch.events import EventRecorder, ReportedEvent
from smart_dispatch.preferences.unsubscribe_token import UnsubscribeLinks
from smart_dispatch.ratelimit.provider import OverRate
from smart_dispatch.telemetry import Telemetry
from smart_dispatch.telemetry.base import DeadLettered, SendAttempted

log = logging.getLogger(__name__)
_IDLE_WAIT_S = 0.5


class ContentRenderer(Protocol):
    def render(self, template: str, channel: str, data: Mapping[str, object]) -> Content: ...


class SenderPool:
    """`concurrency` workers in this process. `start()` / `stop()` (stop lets in-flight work
    finish). Several pools (processes) may share one durable store."""

    def __init__(
        self,
        store: DispatchStore,
        providers: Mapping[str, Provider],
        decider: Decider,
        events: EventRecorder,
        *,
        renderer: ContentRenderer | None = None,
        retry: RetryPolicy | None = None,
        retry_by_channel: Mapping[str, RetryPolicy] | None = None,
        retry_budget: RetryBudget | None = None,
        concurrency: int = 8,
        consumer: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        telemetry: Telemetry | None = None,
        unsubscribe: UnsubscribeLinks | None = None,
    ) -> None:
        self._store = store
        self._providers = providers
        self._decider = decider
        self._events = events
        self._renderer = renderer
        self._retry = retry or RetryPolicy()
        self._retry_by_channel = dict(retry_by_channel or {})
        self._budget = retry_budget or RetryBudget()
        self._breakers = {channel: CircuitBreaker() for channel in providers}  # one per channel's provider
        self._concurrency = concurrency
        self._consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._clock = clock
        self._telemetry = telemetry or Telemetry.noop()
        self._unsubscribe = unsubscribe  # one-click unsubscribe links (e-mail's List-Unsubscribe)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._claiming: set[asyncio.Task[None]] = set()  # workers waiting for work

    def start(self) -> None:
        self._stopping.clear()
        self._tasks = [
            asyncio.create_task(self._run(f"{self._consumer}-{i}"), name=f"sender-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self) -> None:
        """Workers waiting for work stop at once (an entry a durable store handed out just then
        stays pending and is handed out again after the claim timeout); busy ones finish."""
        self._stopping.set()
        for task in self._claiming:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self, consumer: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self._stopping.is_set():
            try:
                self._claiming.add(task)
                try:
                    claims = await self._store.claim(consumer, 1, _IDLE_WAIT_S)
                finally:
                    self._claiming.discard(task)
                for claim in claims:
                    await self.process(claim)
            except StoreUnavailableError as exc:
                log.warning("dispatch store unavailable (%s); retrying", exc)
                await asyncio.sleep(_IDLE_WAIT_S)
            except Exception:
                # the claim stays unacked and is handed out again after the claim timeout
                log.exception("sender %s failed on a claim", consumer)
                await asyncio.sleep(_IDLE_WAIT_S)

    async def process(self, claim: Claim) -> None:
        """Move the claimed dispatch (as it was when claimed) one stage on and ack the claim:
        with the update that finishes the stage when there is one, on its own otherwise."""
        record = claim.record
        if record is not None:
            resumed = record.state is DispatchState.SENDING and record.version == claim.token + 1
            if resumed or (record.version == claim.token and not record.state.terminal):
                with self._telemetry.continue_trace(record.traceparent):
                    if await self._advance(record, resumed, claim):
                        return
        await self._store.ack(claim)

    async def _advance(self, record: DispatchRecord, resumed: bool, claim: Claim) -> bool:
        """True when the claim was acked by the update that finished this stage."""
        if not resumed:
            now = self._clock()
            not_after = record.message.not_after
            if not_after is not None and now > not_after:
                await self._finish(
                    record, DispatchState.EXPIRED, "not_after passed before it could go out", claim
                )
                return True
            if record.state is DispatchState.WAITING_ENGAGEMENT:
                record = record.moved(
                    DispatchState.QUEUED,
                    now,
                    "not engaged within the escalation window: next step",
                    step_index=record.step_index + 1,
                    recheck=True,
                )
            if record.redecide:
                # A claim's record may be older than the stored one, which only the version check
                # of the next update notices; deciding again reserves caps before that: read it.
                current = await self._store.get(record.dispatch_id)
                if current is None or current.version != record.version:
                    return False
                redecided = await self._redecide(current, now, claim)
                if redecided is None:
                    return True
                record = redecided
            elif record.recheck:
                rechecked = await self._recheck(record, now, claim)
                if rechecked is None:
                    return True
                record = rechecked
            # The only store write before the provider call (see the module docstring).
            sending = await self._store.update(record.moved(DispatchState.SENDING, now), record.version)
            if sending is None:
                return False  # changed meanwhile (e.g. cancelled)
            record = sending
        attributes = {
            "smartdispatch.dispatch_id": record.dispatch_id,
            "smartdispatch.step": record.step_index,
        }
        with self._telemetry.span("dispatch.send", attributes, kind=SpanKind.CLIENT):
            await self._send_step(record, claim)
        return True

    async def _redecide(self, record: DispatchRecord, now: datetime, claim: Claim) -> DispatchRecord | None:
        """The record with a new plan, or None when deciding again finished the claim."""
        decision = await self._decider.decide(DecideRequest(record.message, record.recipient))
        if decision.verdict is Verdict.SUPPRESS:
            detail = ", ".join(r.code for r in decision.reasons)
            await self._finish(record, DispatchState.SUPPRESSED, f"decided again: {detail}", claim)
            return None
        if decision.send_at is not None and decision.send_at > now + timedelta(seconds=1):
            later = record.moved(
                DispatchState.SCHEDULED, now, "decided again: deferred", send_at=decision.send_at
            )
            await self._store.update(later, record.version, run_at=decision.send_at, ack=claim)
            return None
        return replace(
            record,
            steps=decision.steps,
            step_index=0,
            redecide=False,
            decision_id=decision.decision_id,
            ruleset_version=decision.ruleset_version,
        )

    async def _recheck(self, record: DispatchRecord, now: datetime, claim: Claim) -> DispatchRecord | None:
        """A later step (fallback, escalation) is decided again for its channel as it goes: the
        deny list, opt-outs, quiet hours and that channel's caps apply as to a first send (the
        same message id, so a cap that already counts the message does not count it twice).
        The record to send, or None when deciding finished the claim: deferred (quiet hours,
        a full cap), or suppressed (then the next step, or the end)."""
        step = record.current_step
        assert step is not None
        message = replace(record.message, channels=(step.channel,))
        decision = await self._decider.decide(DecideRequest(message, record.recipient))
        if decision.verdict is Verdict.SUPPRESS or not decision.steps:
            detail = f"{step.channel} decided again: " + ", ".join(r.code for r in decision.reasons)
            if record.step_index + 1 < len(record.steps):
                following = record.moved(
                    DispatchState.QUEUED, now, detail, step_index=record.step_index + 1, recheck=True
                )
                await self._store.update(following, record.version, run_at=now, ack=claim)
            elif any(a.outcome == "delivered" for a in record.attempts):  # an escalation not sent
                delivered = record.moved(DispatchState.DELIVERED, now, detail)
                await self._store.update(delivered, record.version, unschedule=True, ack=claim)
            else:
                await self._finish(record, DispatchState.SUPPRESSED, detail, claim)
            return None
        if decision.send_at is not None and decision.send_at > now + timedelta(seconds=1):
            later = record.moved(
                DispatchState.SCHEDULED,
                now,
                f"{step.channel} decided again: deferred",
                send_at=decision.send_at,
            )
            await self._store.update(later, record.version, run_at=decision.send_at, ack=claim)
            return None
        return replace(record, recheck=False)

    async def _send_step(self, record: DispatchRecord, claim: Claim) -> None:
        """One attempt, then its settlement, stored with the claim acked in the same update."""
        step = record.current_step
        assert step is not None
        policy = self._retry_by_channel.get(step.channel, self._retry)
        attempt, error = await self._attempt(record, policy)
        if error is None and attempt.provider_message_id:
            await self._remember_provider_message(record, attempt)
        if isinstance(error, OverRate):  # not an attempt: the message waits for its turn
            now = self._clock()
            run_at = now + timedelta(seconds=error.wait_s)
            waiting = record.moved(
                DispatchState.SCHEDULED, now, f"waiting for its turn: {error}", send_at=run_at
            )
            await self._store.update(waiting, record.version, run_at=run_at, ack=claim)
            return
        await self._settle(replace(record, attempts=(*record.attempts, attempt)), error, policy, claim)

    async def _remember_provider_message(self, record: DispatchRecord, attempt: Attempt) -> None:
        """Index the provider's message id to the dispatch, before its receipt can arrive
        (channels/receipts.py). A store failure loses only the receipt, never the send."""
        try:
            await self._store.remember_provider_message(
                attempt.provider, attempt.provider_message_id, record.dispatch_id
            )
        except SmartDispatchError as exc:
            log.warning("dispatch %s: its receipts will not be matched: %s", record.dispatch_id, exc)

    async def _attempt(
        self, record: DispatchRecord, policy: RetryPolicy
    ) -> tuple[Attempt, ProviderError | None]:
        """Send the current step once: the attempt as recorded, and the typed error when it
        failed (None: delivered). No store write; the breaker learns of the provider's health."""
        step = record.current_step
        assert step is not None
        provider = self._providers.get(step.channel)
        number = record.attempts_in_step() + 1
        key = f"{record.dispatch_id}:{record.step_index}"
        if number == 1:
            self._budget.deposit()
        error: ProviderError | None = None
        result = None
        if provider is None:
            error = ProviderError(
                f"no provider configured for channel {step.channel!r}",
                provider="none",
                channel=step.channel,
                retryable=False,
            )
        elif not self._breakers[step.channel].allow():
            error = CircuitOpenError(provider.name, step.channel)
        else:
            result, error = await self._call(provider, record, key, number, policy)
        now = self._clock()
        if error is None:
            assert result is not None
            attempt = Attempt(
                record.step_index, step.channel, result.provider, number, now, "delivered", "", key,
                result.provider_message_id,
            )  # fmt: skip
        else:
            attempt = Attempt(
                record.step_index, step.channel, error.provider, number, now, _outcome(error), str(error), key
            )
        if not isinstance(error, OverRate):
            self._telemetry.send_attempted(_attempted(record, attempt))
        return attempt, error

    async def _call(
        self, provider: Provider, record: DispatchRecord, key: str, number: int, policy: RetryPolicy
    ) -> tuple[SendResult | None, ProviderError | None]:
        """The provider call, bounded by the policy's timeout; every failure as a ProviderError."""
        step = record.current_step
        assert step is not None
        breaker = self._breakers[step.channel]
        try:
            delivery = Delivery(
                record.dispatch_id,
                record.message.id,
                record.recipient.user_id,
                step.channel,
                step.address,
                self._content(record, step.channel),
                key,
                number,
                self._unsubscribe_url(record, step.channel),
            ).for_provider(provider.name)  # a template variant targeting this provider, if any
            async with asyncio.timeout(policy.timeout_s):  # no extra task per send, unlike wait_for
                result = await provider.send(delivery)
        except OverRate as exc:  # says nothing of the provider's health
            breaker.release()
            return None, exc
        except ProviderError as exc:
            # The breaker tracks the provider's health: a permanent error (4xx, a bad address, a
            # forbidden destination) is about this message, and must not let a run of bad
            # messages open the circuit for good ones.
            if exc.retryable:
                breaker.record_failure()
            else:
                breaker.release()
            return None, exc
        except TimeoutError:
            breaker.record_failure()
            error = ProviderError(
                f"no answer within {policy.timeout_s}s",
                provider=provider.name,
                channel=step.channel,
                retryable=True,
            )
            return None, error
        except SmartDispatchError as exc:  # e.g. a template that fails to render: never retryable
            breaker.release()
            return None, ProviderError(
                str(exc), provider=provider.name, channel=step.channel, retryable=False
            )
        except BaseException:  # cancelled (stop) or a bug: a half-open trial must not stay taken
            breaker.release()
            raise
        breaker.record_success()
        return result, None

    async def _settle(
        self, record: DispatchRecord, error: ProviderError | None, policy: RetryPolicy, claim: Claim
    ) -> None:
        """The one place an attempt's outcome moves the dispatch on (`record` holds the attempt):
        delivered (waiting for engagement when an escalation follows), a retry after backoff, the
        next step (fallback), or failed and dead-lettered. Stored with the claim acked."""
        step = record.current_step
        assert step is not None
        now = record.attempts[-1].at
        if error is None:
            await self._record_event(record, "delivered", step.channel)
            if record.escalate_after_s and record.step_index + 1 < len(record.steps):
                run_at = now + timedelta(seconds=record.escalate_after_s)
                waiting = record.moved(
                    DispatchState.WAITING_ENGAGEMENT,
                    now,
                    f"delivered by {step.channel}; waiting for engagement",
                    send_at=run_at,
                )
                await self._store.update(waiting, record.version, run_at=run_at, ack=claim)
            else:
                delivered = record.moved(DispatchState.DELIVERED, now, f"delivered by {step.channel}")
                await self._store.update(delivered, record.version, ack=claim)
            return
        if error.invalid_address:  # e.g. an unregistered push token: later decisions skip it
            await self._address_invalid(record, step.channel, step.address)
        number = record.attempts_in_step()
        can_fall_back = record.step_index + 1 < len(record.steps)
        waits_for_circuit = isinstance(error, CircuitOpenError) and can_fall_back
        retry = error.retryable and number < policy.max_attempts and not waits_for_circuit
        if retry and not self._budget.withdraw():
            retry, error = (
                False,
                ProviderError(
                    f"{error} (retry budget spent: retries are at {self._budget.ratio:.0%} of sends)",
                    provider=error.provider,
                    channel=error.channel,
                    retryable=False,
                ),
            )
        if retry:
            delay = compute_backoff(number, policy, error.retry_after_s)
            run_at = now + timedelta(seconds=delay)
            later = record.moved(
                DispatchState.SCHEDULED, now, f"retry in {delay:.2f}s: {error}", send_at=run_at
            )
            await self._store.update(later, record.version, run_at=run_at, ack=claim)
            return
        await self._next_step_or_fail(record, str(error), claim)

    async def _next_step_or_fail(self, record: DispatchRecord, reason: str, claim: Claim) -> None:
        now = self._clock()
        if record.step_index + 1 < len(record.steps):
            following = record.steps[record.step_index + 1].channel
            moved = record.moved(
                DispatchState.QUEUED,
                now,
                f"fallback to {following}: {reason}",
                step_index=record.step_index + 1,
                recheck=True,
            )
            await self._store.update(moved, record.version, run_at=now, ack=claim)
            return
        await self._finish(
            record, DispatchState.FAILED, f"every channel failed; last: {reason}", claim, dead_letter=True
        )

    async def _finish(
        self,
        record: DispatchRecord,
        state: DispatchState,
        detail: str,
        claim: Claim,
        *,
        dead_letter: bool = False,
    ) -> None:
        """A terminal state other than DELIVERED (the claim acked with it): the message's caps
        are given back. A dead letter is indexed by the same update that stores it."""
        final = record.moved(state, self._clock(), detail, dead_lettered=dead_letter)
        if await self._store.update(final, record.version, unschedule=True, ack=claim) is None:
            return
        if dead_letter:
            log.warning("dispatch %s dead-lettered: %s", record.dispatch_id, detail)
            step = record.current_step
            channel = step.channel if step else ""
            self._telemetry.dead_lettered(DeadLettered(record.dispatch_id, record.message.id, channel))
            await self._record_event(record, "failed", channel)
        else:
            try:
                await self._events.refund(record.recipient.user_id, record.message.id)
            except SmartDispatchError as exc:
                log.warning("could not refund caps of dispatch %s: %s", record.dispatch_id, exc)

    async def _record_event(self, record: DispatchRecord, kind: str, channel: str) -> None:
        event = ReportedEvent(record.recipient.user_id, kind, self._clock(), record.message.id, channel)  # type: ignore[arg-type]
        try:
            await self._events.report(event)
        except SmartDispatchError as exc:  # behaviour/caps bookkeeping must never fail a send
            log.warning("could not record %s for dispatch %s: %s", kind, record.dispatch_id, exc)

    async def _address_invalid(self, record: DispatchRecord, channel: str, address: str) -> None:
        try:
            await self._events.address_invalid(record.recipient.user_id, channel, address)
        except SmartDispatchError as exc:  # bookkeeping must never fail a send
            log.warning(
                "could not mark the %s address of dispatch %s invalid: %s", channel, record.dispatch_id, exc
            )

    def _unsubscribe_url(self, record: DispatchRecord, channel: str) -> str:
        """The person's one-click link out of this message's category on `channel` ("" when
        links are off or the category is required)."""
        if self._unsubscribe is None:
            return ""
        return self._unsubscribe.url_for(record.recipient.user_id, record.message.category, channel)

    def _content(self, record: DispatchRecord, channel: str) -> Content:
        message = record.message
        if message.template and self._renderer is not None:
            return self._renderer.render(message.template, channel, message.data)
        data = dict(message.data)
        text = str(data.get("text") or f"{message.category} message {message.id}")
        return Content(
            text=text, subject=str(data.get("subject", "")), title=str(data.get("title", "")), fields=data
        )


def _outcome(error: ProviderError) -> str:
    return "retryable_error" if error.retryable else "permanent_error"


def _attempted(record: DispatchRecord, attempt: Attempt) -> SendAttempted:
    return SendAttempted(
        record.dispatch_id,
        record.message.id,
        attempt.channel,
        attempt.provider,
        attempt.number,
        attempt.outcome,
    )
