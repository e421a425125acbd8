"""`smart-dispatch rules test`: table tests for rule files, in the spirit of `opa test`.

Test files are YAML (by default `<rules dir>/tests/*.yaml`):

    now: "2026-06-01T10:00:00Z"            default clock for every case (optional)
    recipients:                            named recipients to reuse (optional)
      ada: {user_id: ada, timezone: Europe/Berlin, addresses: {sms: "+4915550100"}}
    cases:
      - name: otp goes by SMS now
        now: "2026-06-01T22:30:00Z"        this case's clock (optional)
        lists: [allow]                     the recipient's list memberships (optional)
        before:                            messages decided first, e.g. to fill caps (optional)
          - {id: m0, category: marketing}
        history:                           what the person did with earlier messages (optional)
          - {channel: email, count: 20, events: [delivered, opened], category: marketing,
             at: "2026-05-30T18:00:00Z"}     `count` messages sent at `at` (default: a day
                                           before the case's clock), each with these events
        message: {id: o1, category: otp}
        recipient: ada                     a name from `recipients` or an inline mapping
        expect:                            every key optional
          verdict: send                    send | defer | suppress
          channels: [sms, email]           the plan's channels, in order
          send_at: "2026-06-01T22:30:00Z"
          send_between: ["2026-06-01T18:00:00Z", "2026-06-01T20:00:00Z"]   inclusive
          rules: [otp_sms_now]             exactly the rules that fired, in firing order
          reasons: [channel_selected]      these codes appear in this order (others may be between)
          lane: critical                   the delivery lane
      - name: facts only
        facts: {category: otp}             match rules against a facts document directly
        expect: {rules: [otp_sms_now]}

Each case runs the real pipeline on a fresh in-memory store with a fixed clock. Learned choices
are seeded, so a case that depends on exploration gives the same answer every run; `history`
feeds the person's engagement model and the population prior through the same paths as real
decisions and `ReportEvent`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from smart_dispatch.behaviour.base import EVENT_KINDS, SentMessage, slot_of
from smart_dispatch.behaviour.memory import MemoryBehaviourStore
from smart_dispatch.counters.memory import MemoryCounterStore
from smart_dispatch.decide.pipeline import Decider
from smart_dispatch.decide.validate import zone_for
from smart_dispatch.domain import DecideRequest, Decision, Message, Recipient
from smart_dispatch.errors import RuleFileError, SmartDispatchError
from smart_dispatch.events import EventRecorder, ReportedEvent
from smart_dispatch.lists.memory import MemoryListStore
from smart_dispatch.rules.active import ActiveRules
from smart_dispatch.rules.yaml_lines import LineDict, load_yaml
from smart_dispatch.user_state import UserStateReader

_FILE_KEYS = frozenset({"now", "recipients", "cases"})
_CASE_KEYS = frozenset(
    {"name", "now", "lists", "before", "history", "message", "recipient", "dry_run", "facts", "expect"}
)
_HISTORY_KEYS = frozenset({"channel", "count", "events", "category", "at"})
#: Learned choices in tests are seeded (see `Decider`): the same case, the same answer.
TEST_SEED = 0
_EXPECT_KEYS = frozenset({"verdict", "channels", "send_at", "send_between", "rules", "reasons", "lane"})
_MESSAGE_KEYS = frozenset({"id", "category", "labels", "template", "data", "channels", "not_after"})
_RECIPIENT_KEYS = frozenset(
    {"user_id", "timezone", "locale", "addresses", "opted_out", "preferred", "attributes"}
)


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    location: str
    problems: tuple[str, ...]
    fired: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class RuleTestReport:
    results: list[CaseResult] = field(default_factory=list)
    rules: tuple[str, ...] = ()

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    @property
    def uncovered(self) -> list[str]:
        fired = {name for result in self.results for name in result.fired}
        return [name for name in self.rules if name not in fired]

    def render(self) -> str:
        lines = []
        for result in self.results:
            lines.append(f"{'PASS' if result.passed else 'FAIL'} {result.name} ({result.location})")
            lines.extend(f"    {problem}" for problem in result.problems)
        covered = len(self.rules) - len(self.uncovered)
        coverage = f"coverage: {covered}/{len(self.rules)} rules exercised"
        if self.uncovered:
            coverage += f"; no case exercises: {', '.join(self.uncovered)}"
        lines.append(coverage)
        lines.append(f"{len(self.results) - len(self.failed)} passed, {len(self.failed)} failed")
        return "\n".join(lines)


def rule_test_files(rules_dir: Path, tests_dir: Path | None = None) -> list[Path]:
    directory = tests_dir or rules_dir / "tests"
    if not directory.is_dir():
        raise RuleFileError(str(directory), 0, "test directory does not exist")
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        raise RuleFileError(str(directory), 0, "no test files (*.yaml, *.yml)")
    return files


async def run_rule_tests(rules_dir: Path, tests_dir: Path | None = None) -> RuleTestReport:
    """Load `rules_dir` (raising `RuleFileError` when invalid) and run every test case."""
    rules = ActiveRules(rules_dir)
    rules.load()
    try:
        report = RuleTestReport(rules=tuple(rule.name for rule in rules.current().ruleset.rules))
        for path in rule_test_files(rules_dir, tests_dir):
            for case in _cases(path):
                report.results.append(await _run_case(rules, case))
        return report
    finally:
        rules.close()


@dataclass(frozen=True, slots=True)
class _Case:
    name: str
    location: str
    now: datetime
    spec: LineDict
    recipient: Recipient | None


def _cases(path: Path) -> list[_Case]:
    file = str(path)
    doc = load_yaml(path.read_text(encoding="utf-8"), file)
    if not isinstance(doc, LineDict):
        raise RuleFileError(file, 1, "a test file must be a mapping with keys now, recipients, cases")
    _known(doc, _FILE_KEYS, "test file", file)
    default_now = _instant(doc.get("now"), file, doc.line_of("now")) if "now" in doc else datetime.now(UTC)
    named = doc.get("recipients") or {}
    if not isinstance(named, Mapping):
        raise RuleFileError(
            file, doc.line_of("recipients"), "recipients must be a mapping of name -> recipient"
        )
    recipients = {name: _recipient(spec, file, doc.line_of("recipients")) for name, spec in named.items()}
    cases = doc.get("cases")
    if not isinstance(cases, list) or not cases:
        raise RuleFileError(file, doc.line_of("cases"), "cases must be a non-empty list")
    out = []
    for spec in cases:
        if not isinstance(spec, LineDict):
            raise RuleFileError(file, doc.line_of("cases"), "each case must be a mapping")
        _known(spec, _CASE_KEYS, "case", file)
        name = str(spec.get("name") or f"case at line {spec.line}")
        now = _instant(spec["now"], file, spec.line_of("now")) if "now" in spec else default_now
        recipient = spec.get("recipient")
        if isinstance(recipient, str):
            if recipient not in recipients:
                raise RuleFileError(file, spec.line_of("recipient"), f"unknown recipient {recipient!r}")
            resolved: Recipient | None = recipients[recipient]
        elif recipient is None:
            resolved = None
        else:
            resolved = _recipient(recipient, file, spec.line_of("recipient"))
        if "facts" not in spec and ("message" not in spec or resolved is None):
            raise RuleFileError(file, spec.line, f"case {name!r} needs `facts`, or `message` and `recipient`")
        out.append(_Case(name, f"{file}:{spec.line}", now, spec, resolved))
    return out


async def _run_case(rules: ActiveRules, case: _Case) -> CaseResult:
    spec, expect = case.spec, case.spec.get("expect") or {}
    file = case.location.rsplit(":", 1)[0]
    if isinstance(expect, LineDict):
        _known(expect, _EXPECT_KEYS, "expect", file)
    if "facts" in spec:
        fired = tuple(rules.current().compiled.matches(spec["facts"]))
        return CaseResult(case.name, case.location, tuple(_compare_rules(expect, fired)), fired)

    assert case.recipient is not None
    clock_now = case.now
    lists = spec.get("lists") or []
    store = MemoryListStore()
    for name in lists:
        if name not in ("allow", "deny"):
            raise RuleFileError(file, spec.line_of("lists"), f"unknown list {name!r}; known: allow, deny")
        await store.add(name, case.recipient.user_id)
    behaviour = MemoryBehaviourStore(clock_now.timestamp)
    counters = MemoryCounterStore(clock_now.timestamp)
    reader = UserStateReader(store, behaviour)
    decider = Decider(rules, counters, reader, clock=lambda: clock_now, learning_seed=TEST_SEED)
    try:
        if spec.get("history"):
            recorder = EventRecorder(rules, counters, behaviour)
            await _history(spec, case, behaviour, recorder, rules.current().ruleset.learning.half_life_s)
            await decider.refresh_prior()
        for earlier in spec.get("before") or []:
            await decider.decide(
                DecideRequest(_message(earlier, file, spec.line_of("before")), case.recipient)
            )
        request = DecideRequest(
            _message(spec["message"], file, spec.line_of("message")),
            case.recipient,
            bool(spec.get("dry_run")),
        )
        decision = await decider.decide(request)
    except RuleFileError:
        raise
    except SmartDispatchError as exc:
        return CaseResult(case.name, case.location, (f"error: {exc}",), ())
    return CaseResult(case.name, case.location, tuple(_compare(expect, decision)), decision.matched_rules)


async def _history(
    spec: LineDict, case: _Case, behaviour: MemoryBehaviourStore, recorder: EventRecorder, half_life_s: float
) -> None:
    """Earlier messages, sent and reported on as a decision and `ReportEvent` would."""
    assert case.recipient is not None
    file, line = case.location.rsplit(":", 1)[0], spec.line_of("history")
    entries = spec["history"]
    if not isinstance(entries, list):
        raise RuleFileError(file, line, "history must be a list of {channel, count, events, category, at}")
    zone = zone_for(case.recipient.timezone or "UTC")
    for index, entry in enumerate(entries):
        if not isinstance(entry, LineDict):
            raise RuleFileError(file, line, "each history entry must be a mapping")
        _known(entry, _HISTORY_KEYS, "history entry", file)
        where = entry.line
        channel = str(entry.get("channel", ""))
        if channel not in case.recipient.addresses:
            raise RuleFileError(file, where, f"history: channel {channel!r} is not one of the recipient's")
        count = entry.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            raise RuleFileError(
                file, where, f"history: count must be an integer from 1 to 1000, got {count!r}"
            )
        kinds = [str(k) for k in entry.get("events") or []]
        known = [k for k in EVENT_KINDS if k != "active"]
        unknown = [k for k in kinds if k not in known]
        if unknown:
            raise RuleFileError(
                file, where, f"history: unknown event {unknown[0]!r}; known: {', '.join(known)}"
            )
        at = _instant(entry["at"], file, where) if "at" in entry else case.now - timedelta(days=1)
        category = str(entry.get("category", "marketing"))
        for n in range(count):
            message_id = f"history-{index}-{n}"
            sent = SentMessage(
                case.recipient.user_id,
                message_id,
                channel,
                slot_of(at.astimezone(zone)),
                category,
                at.timestamp(),
            )
            await behaviour.decided(sent, half_life_s)
            for kind in kinds:
                await recorder.report(ReportedEvent(case.recipient.user_id, kind, at, message_id, channel))  # type: ignore[arg-type]


def _compare(expect: Mapping[str, Any], decision: Decision) -> list[str]:
    problems = _compare_rules(expect, decision.matched_rules)
    got_verdict = decision.verdict.value
    if "verdict" in expect and str(expect["verdict"]).lower() != got_verdict:
        problems.append(f"verdict: expected {expect['verdict']}, got {got_verdict}")
    channels = [step.channel for step in decision.steps]
    if "channels" in expect and list(expect["channels"]) != channels:
        problems.append(f"channels: expected {list(expect['channels'])}, got {channels}")
    if "send_at" in expect:
        want = _instant(expect["send_at"], "expect", 0)
        if decision.send_at != want:
            got = decision.send_at.isoformat() if decision.send_at else "none"
            problems.append(f"send_at: expected {want.isoformat()}, got {got}")
    if "send_between" in expect:
        bounds = expect["send_between"]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise RuleFileError("expect", 0, "send_between must be [earliest, latest]")
        low, high = (_instant(bound, "expect", 0) for bound in bounds)
        if decision.send_at is None or not low <= decision.send_at <= high:
            got = decision.send_at.isoformat() if decision.send_at else "none"
            problems.append(f"send_at: expected from {low.isoformat()} to {high.isoformat()}, got {got}")
    if "lane" in expect and str(expect["lane"]) != decision.lane:
        problems.append(f"lane: expected {expect['lane']}, got {decision.lane}")
    if "reasons" in expect:
        codes = [reason.code for reason in decision.reasons]
        if not _in_order(list(expect["reasons"]), codes):
            problems.append(f"reasons: expected {list(expect['reasons'])} in this order, got {codes}")
    return problems


def _compare_rules(expect: Mapping[str, Any], fired: Sequence[str]) -> list[str]:
    if "rules" in expect and list(expect["rules"]) != list(fired):
        return [f"rules: expected {list(expect['rules'])}, got {list(fired)}"]
    return []


def _in_order(wanted: list[str], got: list[str]) -> bool:
    remaining = iter(got)
    return all(any(code == item for item in remaining) for code in wanted)


def _message(spec: Any, file: str, line: int) -> Message:
    if not isinstance(spec, LineDict):
        raise RuleFileError(file, line, "a message must be a mapping")
    _known(spec, _MESSAGE_KEYS, "message", file)
    not_after = spec.get("not_after")
    return Message(
        id=str(spec.get("id", "")),
        category=str(spec.get("category", "")),
        labels=dict(spec.get("labels") or {}),
        template=str(spec.get("template", "")),
        data=dict(spec.get("data") or {}),
        channels=tuple(spec.get("channels") or ()),
        not_after=_instant(not_after, file, spec.line_of("not_after")) if not_after else None,
    )


def _recipient(spec: Any, file: str, line: int) -> Recipient:
    if not isinstance(spec, LineDict):
        raise RuleFileError(file, line, "a recipient must be a mapping")
    _known(spec, _RECIPIENT_KEYS, "recipient", file)
    return Recipient(
        user_id=str(spec.get("user_id", "")),
        timezone=str(spec.get("timezone", "UTC")),
        locale=str(spec.get("locale", "")),
        addresses=dict(spec.get("addresses") or {}),
        opted_out=frozenset(spec.get("opted_out") or ()),
        preferred=tuple(spec.get("preferred") or ()),
        attributes=dict(spec.get("attributes") or {}),
    )


def _instant(value: Any, file: str, line: int) -> datetime:
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise RuleFileError(
            file, line, f"invalid timestamp {value!r}; use RFC 3339, e.g. 2026-06-01T10:00:00Z"
        ) from exc
    if when.tzinfo is None:
        raise RuleFileError(file, line, f"timestamp {value!r} needs a UTC offset or Z")
    return when.astimezone(UTC)


def _known(spec: LineDict, allowed: frozenset[str], what: str, file: str) -> None:
    for key in spec:
        if key not in allowed:
            raise RuleFileError(
                file,
                spec.line_of(key),
                f"unknown key {key!r} in {what}; allowed: {', '.join(sorted(allowed))}",
            )
