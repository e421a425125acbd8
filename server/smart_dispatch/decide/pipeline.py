"""The decision pipeline: one pass from a `DecideRequest` to a `Decision`, on the ruleset
version leased for it (`Decider.decide`; `_decide` and `_outcome` read in this order):

1. validate the request (every problem names its field) and its clock (`at`);
2. read the person's state: list memberships, behaviour, preferences; deny-listed: SUPPRESS;
3. what their preferences impose on this message (opt-outs, mute, their quiet hours, channel
   order) and which channels are reachable;
4. facts, then rules: every rule whose condition holds fires, in priority order;
5. fold the enforced rules' effects into a draft; rank the channels (rules, the person's order,
   engagement, cost); the learned choice (`choose`) may move one to the front; channels the
   template has no variant for drop out (none for the best one: INVALID_ARGUMENT);
6. suppress when a rule says so, nothing is reachable, or the expected engagement is too low;
7. timing: quiet hours (the rules' and the person's), the mute and the deadline; the learned
   send time (`send_time`) may pick a later hour;
8. caps (caps_step.py): reserve every cap of the best channel with room, or apply `on_cap`;
9. plan: verdict, steps (the channel, then its fallbacks), reasons, caps, lane, digest.

Pure except for its awaits: the user-state read of 2 (one store round trip on Redis; a
category in `fail_open` goes on without it when the store is down), the cap reservation of 8
(one round trip; more only when a cap holds the message back), and, after the pass, counting a
decision that sends or defers as a send for the engagement model (a store failure costs the
count, not the decision). Telemetry hooks (metrics, decision log) then hear of the decision.

Shadow rules (or every rule, with the server's shadow mode) are evaluated and their would-be
outcome is reported with `shadow:` reason codes and logged, but the plan returned is the one
without them; their caps are counted under `shadow:<cap>` so they never consume real capacity.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from smart_dispatch.behaviour.base import Behaviour, Population, SentMessage, slot_of
from smart_dispatch.behaviour.prior import PriorCache
from smart_dispatch.counters.base import CounterStore
from smart_dispatch.decide import reasons as R
from smart_dispatch.decide.caps_step import SHADOW_PREFIX, CapStep, FailurePolicy
from smart_dispatch.decide.draft import PlanDraft, fold
from smart_dispatch.decide.facts import build_facts, reachable_channels
from smart_dispatch.decide.learned import (
    ChannelScore,
    has_data,
    posterior,
    prior_key,
    prior_rate,
    score_channels,
)
from smart_dispatch.decide.learned import explain as explain_score
from smart_dispatch.decide.personal import NO_TERMS, PersonalTerms, personal_terms
from smart_dispatch.decide.rank import fallback_channels, rank_channels
from smart_dispatch.decide.schedule import after_quiet_hours, past_deadline
from smart_dispatch.decide.send_time import SlotScore, best_send_time
from smart_dispatch.decide.send_time import explain as explain_slot
from smart_dispatch.decide.timing import in_window
from smart_dispatch.decide.trace import Trace
from smart_dispatch.decide.validate import validate_request, zone_for
from smart_dispatch.domain import (
    DecideRequest,
    Decision,
    Explanation,
    PlanStep,
    Reason,
    RuleEvaluation,
    Seen,
    Verdict,
    default_lane,
)
from smart_dispatch.errors import InvalidRequestError, StoreError, StoreUnavailableError, quote
from smart_dispatch.preferences.base import NO_PREFERENCES, Preferences
from smart_dispatch.rules.active import ActiveRules, RulesVersion
from smart_dispatch.rules.model import Rule
from smart_dispatch.telemetry import Telemetry
from smart_dispatch.user_state import UserStateReader

__all__ = ["Decider", "FailurePolicy", "TemplateCatalog"]
log = logging.getLogger(__name__)


class TemplateCatalog(Protocol):
    def has(self, template: str, channel: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Case:
    """Everything about one request that does not depend on which rules are enforced."""

    request: DecideRequest
    version: RulesVersion
    zone: ZoneInfo
    now: datetime
    memberships: frozenset[str]
    reachable: tuple[str, ...]
    behaviour: Behaviour
    population: Population
    #: what the person's stored preferences say about this message
    terms: PersonalTerms = NO_TERMS
    #: the person's channel order, then the request's (ranking)
    preferred: tuple[str, ...] = ()


@dataclass(slots=True)
class _Outcome:
    verdict: Verdict
    steps: list[PlanStep] = field(default_factory=list)
    send_at: datetime | None = None
    trace: Trace = field(default_factory=Trace)
    draft: PlanDraft = field(default_factory=PlanDraft)
    ranked: list[str] = field(default_factory=list)
    learned: tuple[str, ...] = ()
    send_times: tuple[str, ...] = ()
    digest_until: datetime | None = None  # on_cap: digest


class Decider:
    """Turns a `DecideRequest` into a `Decision`. One per server; safe to call concurrently
    from one event loop. `shadow_all` makes every rule a shadow rule."""

    def __init__(
        self,
        rules: ActiveRules,
        counters: CounterStore,
        user_state: UserStateReader,
        failure_policy: FailurePolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        shadow_all: bool = False,
        templates: TemplateCatalog | None = None,
        telemetry: Telemetry | None = None,
        allow_request_clock: bool = False,
        learning_seed: int | None = None,
        prior_refresh_s: float = 5.0,
    ) -> None:
        self._rules = rules
        self._user_state_reader = user_state
        self._failure = failure_policy or FailurePolicy()
        self._telemetry = telemetry or Telemetry.noop()
        self._caps = CapStep(counters, self._failure, self._telemetry)
        self._clock = clock
        self._shadow_all = shadow_all
        self._templates = templates
        self._allow_request_clock = allow_request_clock
        self._behaviour = user_state.behaviour
        self._prior = PriorCache(user_state.behaviour, prior_refresh_s)
        self._seed = learning_seed
        self._random = random.Random(learning_seed)

    async def decide(self, request: DecideRequest) -> Decision:
        message = request.message
        attributes = {
            "smartdispatch.message_id": message.id,
            "smartdispatch.category": message.category,
            "smartdispatch.dry_run": request.dry_run,
        }
        with self._telemetry.span("decide", attributes):
            with self._rules.lease() as version:
                decision = await self._decide(version, request)
                await self._record_sent(version, request, decision)
            self._telemetry.decided(request, decision, request.at or self._clock())
            traceparent = self._telemetry.traceparent()
            return replace(decision, traceparent=traceparent) if traceparent else decision

    async def _record_sent(self, version: RulesVersion, request: DecideRequest, decision: Decision) -> None:
        """Count a decided message as sent on its channel and local slot (the engagement model's
        attempts), once per message id. A store failure costs the count, not the decision."""
        if request.dry_run or not decision.steps or decision.verdict is Verdict.SUPPRESS:
            return
        step = decision.steps[0]
        local = step.send_at.astimezone(zone_for(request.recipient.timezone or "UTC"))
        learning = version.ruleset.learning
        sent = SentMessage(
            request.recipient.user_id,
            request.message.id,
            step.channel,
            slot_of(local),
            prior_key(request.message.category, request.recipient.attributes, learning.segment_by),
            step.send_at.timestamp(),
            (request.at or self._clock()).timestamp(),
        )
        try:
            await self._behaviour.note_sent(sent, learning.half_life_s)
        except StoreError as exc:
            log.warning("send of %s not counted for learning: %s", request.message.id, exc)

    async def refresh_prior(self) -> None:
        """Re-read the population prior now (a simulation does it once per simulated day, so
        its runs do not depend on how fast the wall clock went)."""
        await self._prior.refresh()

    async def close(self) -> None:
        await self._prior.close()

    async def _decide(self, version: RulesVersion, request: DecideRequest) -> Decision:
        zone = validate_request(request, version.ruleset.categories)
        if request.at is not None and not self._allow_request_clock:
            raise InvalidRequestError(
                "at",
                "the request clock is off: start the sidecar with --allow-request-clock to decide as of `at`",
            )
        now = request.at or self._clock()
        trace = Trace()
        memberships, behaviour, preferences = await self._user_state(request, trace)
        if "deny" in memberships:
            trace.add(R.DENY_LISTED, detail="recipient is on the deny list")
            seen = Seen(memberships, behaviour, {}, preferences)
            return _decision(version, request, _Outcome(Verdict.SUPPRESS, trace=trace), (), seen=seen)

        category = request.message.category
        required = category in version.ruleset.required_categories
        terms = personal_terms(preferences, category, required, now)
        reachable = reachable_channels(
            request.message, request.recipient, terms.opted_out, terms.invalid_addresses
        )
        learning = version.ruleset.learning
        facts = build_facts(
            request,
            now,
            zone,
            memberships,
            reachable,
            behaviour,
            learning.half_life_s,
            terms.facts(now, zone),
        )
        evaluating = {"smartdispatch.ruleset_version": version.version}
        with self._telemetry.span("rules.evaluate", evaluating) as span:
            fired = version.compiled.matches(facts)
            span.set_attribute("smartdispatch.rules.matched", len(fired))
        preferred = terms.preferred(request.recipient.preferred)
        case = _Case(
            request,
            version,
            zone,
            now,
            memberships,
            reachable,
            behaviour,
            self._prior.current(),
            terms,
            preferred,
        )
        rules = [version.by_name[name] for name in fired]
        enforced = [r for r in rules if not (r.shadow or self._shadow_all)]

        outcome = await self._outcome(case, enforced, trace, shadow=False)
        if len(enforced) < len(rules):
            would = await self._outcome(case, rules, Trace(), shadow=True)
            _report_shadow(request, outcome, would)
        explanation = (
            _explain(version, facts, fired, rules, outcome, self._shadow_all) if request.explain else None
        )
        seen = Seen(memberships, behaviour, facts, preferences)
        return _decision(version, request, outcome, fired, explanation, seen)

    async def _outcome(self, case: _Case, rules: list[Rule], trace: Trace, *, shadow: bool) -> _Outcome:
        request, recipient = case.request, case.request.recipient
        draft = fold(rules, explain=request.explain)
        draft.mute_until, draft.personal_quiet_hours = case.terms.mute_until, case.terms.quiet_hours
        learning = case.version.ruleset.learning
        ranked = rank_channels(
            case.reachable,
            draft,
            case.preferred,
            case.behaviour,
            case.now.timestamp(),
            learning.half_life_s,
            learning.cost,
        )
        scores = self._learned(case, draft, ranked)
        objective = draft.choose.objective if draft.choose is not None else ""
        if draft.choose is not None and ranked and not scores:
            trace.add(R.LEARNED_CHOICE, draft.source["choose"], "no engagement data yet: the rules' order")
        if scores:
            chosen = scores[0].channel
            ranked = [chosen, *(c for c in ranked if c != chosen)]
            trace.add(R.LEARNED_CHOICE, draft.source["choose"], explain_score(scores[0], objective))
        ranked = self._with_templates(request, ranked)
        learned = tuple(explain_score(s, objective) for s in scores) if request.explain else ()
        suppressed = _Outcome(Verdict.SUPPRESS, trace=trace, draft=draft, ranked=ranked, learned=learned)
        if draft.suppress is not None:
            trace.add(R.SUPPRESSED_BY_RULE, draft.source["suppress"], draft.suppress)
            return suppressed
        if not ranked:
            opted_out = [
                c for c in reachable_channels(request.message, recipient) if c in case.terms.opted_out
            ]
            if opted_out:
                category = request.message.category
                trace.add(R.OPTED_OUT, detail=f"the person opted out of {category} on {', '.join(opted_out)}")
            else:
                trace.add(R.NO_REACHABLE_CHANNEL, detail=_unreachable_detail(case.reachable))
            return suppressed
        if draft.min_expected_engagement is not None:
            expected = scores[0].mean if scores else self._expected(case, ranked[0])
            if expected < draft.min_expected_engagement:
                detail = f"{ranked[0]}: {expected:.4f} < {draft.min_expected_engagement:g}"
                trace.add(R.LOW_EXPECTED_ENGAGEMENT, draft.source["min_expected_engagement"], detail)
                return suppressed

        send_at = after_quiet_hours(case.now, case.zone, draft, trace)
        if send_at is None or past_deadline(request.message.not_after, send_at, trace):
            return suppressed
        send_times: tuple[str, ...] = ()
        if draft.send_time is not None:
            slots = self._send_times(case, draft, send_at)
            if request.explain:
                send_times = tuple(explain_slot(s) for s in slots)
            if slots:
                send_at = slots[0].at
                trace.add(R.SEND_TIME, draft.source["send_time"], explain_slot(slots[0]))
        caps = [case.version.ruleset.caps[name] for name in draft.caps]
        placed = await self._caps.place(
            request,
            caps,
            draft,
            ranked,
            case.zone,
            send_at,
            send_at > case.now,
            case.memberships,
            trace,
            shadow,
        )
        if placed.channel is None or placed.send_at is None:
            return suppressed
        if past_deadline(request.message.not_after, placed.send_at, trace):
            return suppressed

        chosen = placed.channel
        trace.reasons.insert(0, Reason(R.CHANNEL_SELECTED, draft.source.get(f"prefer:{chosen}", ""), chosen))
        channels = [chosen, *fallback_channels(chosen, ranked, draft)]
        steps = [PlanStep(c, recipient.addresses[c], placed.send_at) for c in channels]
        verdict = Verdict.DEFER if placed.deferred else Verdict.SEND
        until = placed.send_at if placed.digest else None
        return _Outcome(verdict, steps, placed.send_at, trace, draft, ranked, learned, send_times, until)

    def _send_times(self, case: _Case, draft: PlanDraft, earliest: datetime) -> list[SlotScore]:
        """The `send_time` effect's candidate hours, best first (outside quiet hours only)."""
        assert draft.send_time is not None
        learning = case.version.ruleset.learning
        windows = () if draft.bypass_quiet_hours else (draft.quiet_hours, draft.personal_quiet_hours)
        quiet = [w for w in windows if w is not None]

        def allowed(local: time) -> bool:
            return not any(in_window(local, w.start, w.end) for w in quiet)

        return best_send_time(
            earliest,
            case.zone,
            draft.send_time,
            case.behaviour.counts,
            case.population,
            case.now.timestamp(),
            learning.half_life_s,
            self._rng(case.request, "send_time"),
            allowed,
            case.request.message.not_after,
            keep=None if case.request.explain else 1,
        )

    def _rng(self, request: DecideRequest, purpose: str) -> random.Random:
        """The process's random source, or with a seed one that depends on it and the message
        id alone (reproducible whatever else runs concurrently)."""
        if self._seed is None:
            return self._random
        return random.Random(f"{self._seed}:{purpose}:{request.message.id}")

    def _learned(self, case: _Case, draft: PlanDraft, ranked: list[str]) -> list[ChannelScore]:
        """The `choose` effect's scores, best first; none without it. Candidates: the ranked
        channels rules prefer (all ranked ones when no rule prefers any), narrowed to the
        person's own preferences when they have some among them."""
        if draft.choose is None or not ranked:
            return []
        candidates = [c for c in ranked if c in draft.prefer] or ranked
        candidates = [c for c in candidates if c in case.preferred] or candidates
        category, now_s = case.request.message.category, case.now.timestamp()
        learning = case.version.ruleset.learning
        if not has_data(candidates, case.behaviour, case.population, category, learning, now_s):
            return []
        rng = self._rng(case.request, "choose")
        key = prior_key(category, case.request.recipient.attributes, learning.segment_by)
        return score_channels(
            candidates, case.behaviour, case.population, key, learning, draft.choose, now_s, rng
        )

    def _expected(self, case: _Case, channel: str) -> float:
        """The posterior mean P(engage) of `channel` for this person."""
        learning = case.version.ruleset.learning
        now_s = case.now.timestamp()
        own = case.behaviour.stats(channel, now_s, learning.half_life_s)
        key = prior_key(case.request.message.category, case.request.recipient.attributes, learning.segment_by)
        rate = prior_rate(case.population, key, channel, now_s, learning.half_life_s)
        alpha, beta = posterior(own, rate, learning.prior_weight)
        return alpha / (alpha + beta)

    def _with_templates(self, request: DecideRequest, ranked: list[str]) -> list[str]:
        """Channels the message's template can be rendered for. The best-ranked channel lacking
        a variant is an error now, not a failed send later; later channels lacking one drop out."""
        template = request.message.template
        if not template or self._templates is None or not ranked:
            return ranked
        if not self._templates.has(template, ranked[0]):
            raise InvalidRequestError(
                "message.template",
                f"template {quote(template)} has no {ranked[0]!r} variant (the chosen channel)",
            )
        return [channel for channel in ranked if self._templates.has(template, channel)]

    async def _user_state(
        self, request: DecideRequest, trace: Trace
    ) -> tuple[frozenset[str], Behaviour, Preferences]:
        """List memberships, behaviour and preferences (one store round trip)."""
        try:
            with self._telemetry.store_call("user_state.read"):
                state = await self._user_state_reader.read(request.recipient.user_id)
        except StoreUnavailableError:
            if request.message.category not in self._failure.fail_open:
                raise
            trace.add(
                R.STORE_UNAVAILABLE, detail="lists, behaviour and preferences unknown; category fails open"
            )
            return frozenset(), Behaviour(), NO_PREFERENCES
        return state.memberships, state.behaviour, state.preferences


def _report_shadow(request: DecideRequest, outcome: _Outcome, would: _Outcome) -> None:
    """Add the would-be outcome to `outcome` as `shadow:` reasons and log it."""
    channel = would.steps[0].channel if would.steps else ""
    when = would.send_at.isoformat() if would.send_at else ""
    summary = f"would {would.verdict.name}" + (f" via {channel} at {when}" if channel else "")
    outcome.trace.add(SHADOW_PREFIX + "verdict", "", summary)
    for reason in would.trace.reasons:
        outcome.trace.add(SHADOW_PREFIX + reason.code, reason.rule, reason.detail)
    log.info(
        "shadow decision message=%s enforced=%s %s reasons=%s",
        request.message.id,
        outcome.verdict.name,
        summary,
        ",".join(r.code for r in would.trace.reasons),
    )


def _decision(
    version: RulesVersion,
    request: DecideRequest,
    outcome: _Outcome,
    fired: list[str] | tuple[str, ...],
    explanation: Explanation | None = None,
    seen: Seen | None = None,
) -> Decision:
    return Decision(
        decision_id=secrets.token_hex(16),
        verdict=outcome.verdict,
        steps=tuple(outcome.steps),
        send_at=outcome.send_at,
        reasons=tuple(outcome.trace.reasons),
        matched_rules=tuple(fired),
        caps=outcome.trace.caps,
        ruleset_version=version.version,
        explanation=explanation,
        escalate_after_s=outcome.draft.escalate_after if len(outcome.steps) > 1 else None,
        lane=outcome.draft.lane or default_lane(request.message.category, request.bulk),
        digest=outcome.draft.digest if outcome.verdict is not Verdict.SUPPRESS else None,
        digest_until=outcome.digest_until,
        seen=seen,
    )


def _explain(
    version: RulesVersion,
    facts: dict[str, Any],
    fired: list[str],
    rules: list[Rule],
    outcome: _Outcome,
    shadow_all: bool,
) -> Explanation:
    matched = set(fired)
    evaluations = tuple(
        RuleEvaluation(r.name, r.name in matched, r.priority, r.location, r.shadow or shadow_all)
        for r in version.ruleset.rules
    )
    effects = (
        fold(rules, explain=True).applied
        if shadow_all or any(r.shadow for r in rules)
        else outcome.draft.applied
    )
    if shadow_all:
        effects = [replace(e, shadow=True) for e in effects]
    return Explanation(
        facts, evaluations, tuple(effects), tuple(outcome.ranked), outcome.learned, outcome.send_times
    )


def _unreachable_detail(reachable: tuple[str, ...]) -> str:
    if not reachable:
        return "no channel has an address that is allowed and not opted out"
    return f"reachable channels {', '.join(reachable)} are all denied by rules"
