"""What-if replay: the recorded decisions decided again under candidate rules.

    smart-dispatch replay --rules CANDIDATE_DIR (--store URL | --log FILE)
                          [--since 24h] [--until …] [--baseline DIR] [--out DIR] [--examples 3]

Each logged decision is decided again at its original time (the request clock), on a copy of
the state it saw (its list memberships and behaviour counts, from the log entry), by a decider
of its own over private in-memory stores: nothing is written to the live store. Caps count the
replayed traffic itself, from the start of the range. The request is the logged one without
its personal parts (addresses stand in per channel, the user is its pseudonym, no message data:
rules that read `message.data` see none).

The comparison is against what was recorded, or with `--baseline DIR` against those rules
replayed the same way (apples to apples: both sides start from the same empty caps).

Reported, by category and by the rule that decided under the candidate:
- how many verdicts, channels and send times change (a send time changes by more than 1 min);
- the estimated cost change: the candidate rules' channel costs of what would be sent;
- the expected change in opens: each person's smoothed open rate on the channel, from the
  behaviour counts the decision saw;
- a few example message ids per kind of change.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from smart_dispatch.behaviour.base import Behaviour
from smart_dispatch.behaviour.memory import MemoryBehaviourStore
from smart_dispatch.behaviour.redis import decode_behaviour
from smart_dispatch.counters.memory import MemoryCounterStore
from smart_dispatch.decide.pipeline import Decider
from smart_dispatch.decisionlog.entry import dims_of
from smart_dispatch.domain import DecideRequest, Decision, Message, Recipient, Verdict
from smart_dispatch.errors import ConfigurationError, SmartDispatchError
from smart_dispatch.lists.memory import MemoryListStore
from smart_dispatch.plotting import pyplot, save, text_table
from smart_dispatch.preferences.redis import decode_preferences
from smart_dispatch.rules.active import ActiveRules
from smart_dispatch.rules.model import Ruleset
from smart_dispatch.telemetry.audit import log_records
from smart_dispatch.user_state import UserState, UserStateReader

SEND_TIME_TOLERANCE_S = 60.0
KINDS = ("verdict", "channel", "send_time")


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: str
    channel: str
    send_at: datetime | None
    rule: str

    @property
    def goes(self) -> bool:
        return self.verdict != Verdict.SUPPRESS.value and bool(self.channel)


@dataclass(slots=True)
class Change:
    message_id: str
    category: str
    rule: str
    before: Outcome
    after: Outcome
    kinds: tuple[str, ...]
    cost_delta: float
    opens_delta: float


@dataclass(slots=True)
class Group:
    decisions: int = 0
    changed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    cost_delta: float = 0.0
    opens_delta: float = 0.0

    def add(self, change: Change) -> None:
        self.decisions += 1
        for kind in change.kinds:
            self.changed[kind] += 1
        self.cost_delta += change.cost_delta
        self.opens_delta += change.opens_delta


@dataclass(slots=True)
class ReplayReport:
    changes: list[Change] = field(default_factory=list)
    skipped: int = 0  # entries without what replay needs (older log format, malformed)
    errors: dict[str, int] = field(default_factory=dict)  # the candidate refused the request

    def by(self, key: str) -> dict[str, Group]:
        groups: dict[str, Group] = {}
        for change in self.changes:
            groups.setdefault(getattr(change, key) or "(none)", Group()).add(change)
        return dict(sorted(groups.items()))

    def examples(self, per_kind: int) -> dict[str, list[str]]:
        """A few message ids per kind of change, e.g. "verdict send -> suppress"."""
        found: dict[str, list[str]] = {}
        for change in self.changes:
            for kind in change.kinds:
                label = _label(kind, change.before, change.after)
                ids = found.setdefault(label, [])
                if len(ids) < per_kind:
                    ids.append(change.message_id)
        return found

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for change in self.changes:
            for kind in change.kinds:
                label = _label(kind, change.before, change.after)
                out[label] = out.get(label, 0) + 1
        return dict(sorted(out.items(), key=lambda item: -item[1]))


def _label(kind: str, before: Outcome, after: Outcome) -> str:
    if kind == "verdict":
        return f"verdict {before.verdict} -> {after.verdict}"
    if kind == "channel":
        return f"channel {before.channel} -> {after.channel}"
    return "send time"


class _AsRecorded(UserStateReader):
    """The state a logged decision saw, whatever user is asked for."""

    def __init__(self) -> None:
        super().__init__(MemoryListStore(), MemoryBehaviourStore())
        self.state = UserState(frozenset(), Behaviour())

    async def read(self, user_id: str) -> UserState:
        return self.state


class _Replayer:
    """One ruleset deciding logged requests on private in-memory stores."""

    def __init__(self, directory: Path) -> None:
        self.rules = ActiveRules(directory)
        self.rules.load()
        self.reader = _AsRecorded()
        self.decider = Decider(
            self.rules,
            MemoryCounterStore(),
            self.reader,
            allow_request_clock=True,
            learning_seed=0,
            prior_refresh_s=1e9,
        )

    @property
    def ruleset(self) -> Ruleset:
        return self.rules.current().ruleset

    async def decide(self, request: DecideRequest, state: UserState) -> Decision:
        self.reader.state = state
        return await self.decider.decide(request)

    async def close(self) -> None:
        await self.decider.close()
        self.rules.close()


async def replay(
    entries: AsyncIterator[dict[str, Any]],
    candidate: Path,
    baseline: Path | None = None,
    progress: TextIO | None = None,
) -> ReplayReport:
    """Decide every entry again under `candidate` (and `baseline`, if given) and compare."""
    report = ReplayReport()
    new = _Replayer(candidate)
    old = _Replayer(baseline) if baseline is not None else None
    started, shown, done = time.monotonic(), 0.0, 0
    try:
        async for entry in entries:
            done += 1
            if progress is not None and time.monotonic() - shown > 0.5:
                shown = time.monotonic()
                rate = done / max(1e-9, shown - started)
                progress.write(f"\rreplaying: {done:,} decisions ({rate:,.0f}/s)")
                progress.flush()
            parsed = _parse(entry)
            if parsed is None:
                report.skipped += 1
                continue
            request, state = parsed
            try:
                after_decision = await new.decide(request, state)
                before = (
                    _outcome(await old.decide(request, state), request)
                    if old is not None
                    else _recorded(entry)
                )
            except SmartDispatchError as exc:
                name = type(exc).__name__
                report.errors[name] = report.errors.get(name, 0) + 1
                continue
            after = _outcome(after_decision, request)
            report.changes.append(_compare(entry, request, state.behaviour, before, after, new.ruleset))
    finally:
        if progress is not None:
            progress.write(f"\rreplayed: {done:,} decisions in {time.monotonic() - started:.1f} s\n")
        await new.close()
        if old is not None:
            await old.close()
    return report


def _parse(entry: dict[str, Any]) -> tuple[DecideRequest, UserState] | None:
    raw, state = entry.get("request"), entry.get("state")
    if not isinstance(raw, dict) or not isinstance(state, dict):
        return None
    try:
        m, r = raw["message"], raw["recipient"]
        message = Message(
            id=m["id"],
            category=m["category"],
            labels=dict(m.get("labels") or {}),
            template=m.get("template") or "",
            channels=tuple(m.get("channels") or ()),
            not_after=datetime.fromisoformat(m["not_after"]) if m.get("not_after") else None,
        )
        recipient = Recipient(
            user_id=entry["user"],
            timezone=r.get("timezone") or "UTC",
            locale=r.get("locale") or "",
            addresses={channel: f"replay:{channel}" for channel in r.get("channels") or ()},
            opted_out=frozenset(r.get("opted_out") or ()),
            preferred=tuple(r.get("preferred") or ()),
            attributes=dict(r.get("attributes") or {}),
        )
        at = datetime.fromisoformat(entry["ts"])
        request = DecideRequest(message, recipient, at=at, bulk=bool(raw.get("bulk")))
        seen = UserState(
            frozenset(state.get("lists") or ()),
            decode_behaviour(state.get("behaviour") or {}),
            decode_preferences((state.get("preferences") or {}).items()),
        )
    except (KeyError, TypeError, ValueError):
        return None
    return request, seen


def _outcome(decision: Decision, request: DecideRequest) -> Outcome:
    dims = dims_of(request, decision, request.at or datetime.now().astimezone())
    return Outcome(decision.verdict.value, dims["channel"], decision.send_at, dims["rule"])


def _recorded(entry: dict[str, Any]) -> Outcome:
    dims = entry.get("dims") or {}
    send_at = datetime.fromisoformat(entry["send_at"]) if entry.get("send_at") else None
    return Outcome(entry["verdict"], dims.get("channel", ""), send_at, dims.get("rule", ""))


def _compare(
    entry: dict[str, Any],
    request: DecideRequest,
    behaviour: Behaviour,
    before: Outcome,
    after: Outcome,
    ruleset: Ruleset,
) -> Change:
    kinds = []
    if before.verdict != after.verdict:
        kinds.append("verdict")
    if before.goes and after.goes and before.channel != after.channel:
        kinds.append("channel")
    if (
        before.goes
        and after.goes
        and before.send_at is not None
        and after.send_at is not None
        and abs((after.send_at - before.send_at).total_seconds()) > SEND_TIME_TOLERANCE_S
    ):
        kinds.append("send_time")
    learning = ruleset.learning
    at_s = (request.at or datetime.now().astimezone()).timestamp()

    def cost(outcome: Outcome) -> float:
        return learning.cost(outcome.channel) if outcome.goes else 0.0

    def opens(outcome: Outcome) -> float:
        if not outcome.goes:
            return 0.0
        return behaviour.stats(outcome.channel, at_s, learning.half_life_s).engagement

    return Change(
        request.message.id,
        request.message.category,
        after.rule or before.rule,
        before,
        after,
        tuple(kinds),
        cost(after) - cost(before),
        opens(after) - opens(before),
    )


# -- sources ---------------------------------------------------------------------------------


def since_of(text: str, now: datetime) -> datetime:
    """`24h`, `7d`, `90m` before `now`, or an ISO date / date-time (UTC unless it says)."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigurationError(
            f"--since/--until: {text!r} is neither like 24h / 7d nor an ISO date"
        ) from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=now.tzinfo)


async def from_file(path: Path, since: datetime, until: datetime) -> AsyncIterator[dict[str, Any]]:
    """Entries of a decision log file (`SD_AUDIT_LOG`) decided in [since, until), in file order
    (malformed lines skipped)."""
    for entry in log_records(path):
        at = entry.get("at_ms")
        if isinstance(at, int) and since.timestamp() * 1000 <= at < until.timestamp() * 1000:
            yield entry


# -- output ----------------------------------------------------------------------------------


def table(report: ReplayReport, examples: int) -> str:
    out = []
    for title, key in (("by category", "category"), ("by deciding rule (candidate)", "rule")):
        groups = report.by(key)
        header = [title, "decisions", "verdict", "channel", "send time", "cost change", "opens change"]
        rows = [
            [
                name,
                str(g.decisions),
                str(g.changed["verdict"]),
                str(g.changed["channel"]),
                str(g.changed["send_time"]),
                f"{g.cost_delta:+.4f}",
                f"{g.opens_delta:+.2f}",
            ]
            for name, g in groups.items()
        ]
        out += [*text_table(header, rows, left=1), ""]
    counts, found = report.counts(), report.examples(examples)
    out.append("changes:" if counts else "no change")
    for label, n in counts.items():
        out.append(f"  {label}: {n}   e.g. {', '.join(found[label])}")
    if report.skipped:
        out.append(f"skipped {report.skipped} entries without a request and state (older log format)")
    for name, n in report.errors.items():
        out.append(f"the candidate refused {n} requests ({name})")
    return "\n".join(out)


def write_outputs(report: ReplayReport, directory: Path, title: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    decisions = directory / "replay.csv"
    with decisions.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["message_id", "category", "rule", "changes", "verdict_before", "verdict_after", "channel_before",
             "channel_after", "send_at_before", "send_at_after", "cost_change", "opens_change"]
        )  # fmt: skip
        for c in report.changes:
            writer.writerow(
                [c.message_id, c.category, c.rule, "+".join(c.kinds), c.before.verdict, c.after.verdict,
                 c.before.channel, c.after.channel, _iso(c.before.send_at), _iso(c.after.send_at),
                 f"{c.cost_delta:.6f}", f"{c.opens_delta:.6f}"]
            )  # fmt: skip
    summary = directory / "summary.csv"
    with summary.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["by", "name", "decisions", *(f"{k}_changed" for k in KINDS), "cost_change", "opens_change"]
        )
        for key in ("category", "rule"):
            for name, g in report.by(key).items():
                writer.writerow(
                    [
                        key,
                        name,
                        g.decisions,
                        *(g.changed[k] for k in KINDS),
                        f"{g.cost_delta:.6f}",
                        f"{g.opens_delta:.6f}",
                    ]
                )
    return [decisions, summary, plot(report, directory, title)]


def plot(report: ReplayReport, directory: Path, title: str) -> Path:
    """replay.png: changes per category by kind, and the cost and expected-opens change."""
    plt = pyplot()
    groups = report.by("category")
    names = list(groups)
    figure, (changes, deltas) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(KINDS)
    for n, kind in enumerate(KINDS):
        changes.bar(
            [i + n * width for i in range(len(names))],
            [groups[g].changed[kind] for g in names],
            width,
            label=kind,
        )
    changes.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    changes.set(title="Decisions that change, by kind", ylabel="decisions")
    changes.legend()
    xs = range(len(names))
    deltas.bar([x - 0.2 for x in xs], [groups[g].cost_delta for g in names], 0.4, label="cost change")
    deltas.bar(
        [x + 0.2 for x in xs], [groups[g].opens_delta for g in names], 0.4, label="expected opens change"
    )
    deltas.set_xticks(list(xs), names)
    deltas.axhline(0, color="black", linewidth=0.8)
    deltas.set(title="Estimated cost and opens change")
    deltas.legend()
    for axes in (changes, deltas):
        axes.grid(alpha=0.3, axis="y")
    return save(plt, figure, directory / "replay.png", title)


def _iso(instant: datetime | None) -> str:
    return "" if instant is None else instant.isoformat()


async def run_replay(
    *,
    candidate: Path,
    baseline: Path | None,
    store_url: str | None,
    log: Path | None,
    since: datetime,
    until: datetime,
    prefix: str,
    out: Path | None,
    examples: int,
    output: TextIO = sys.stdout,
    progress: TextIO = sys.stderr,
) -> int:
    if (store_url is None) == (log is None):
        raise ConfigurationError("replay: give exactly one of --store URL and --log FILE")
    stores = None
    if store_url is not None:
        from smart_dispatch.stores import StoreOptions, stores_from_url

        stores = stores_from_url(store_url, StoreOptions(timeout_s=5.0, prefix=prefix))
        entries = stores.decisions.scan(int(since.timestamp() * 1000), int(until.timestamp() * 1000))
    else:
        assert log is not None
        entries = from_file(log, since, until)
    try:
        report = await replay(entries, candidate, baseline, progress)
    finally:
        if stores is not None:
            await stores.close()
    against = f"rules {baseline}" if baseline is not None else "the recorded decisions"
    span = f"{since.isoformat(timespec='minutes')} .. {until.isoformat(timespec='minutes')}"
    title = f"replay of {span}: {candidate} against {against}"
    print(title, file=output)
    print(table(report, examples), file=output)
    if out is not None:
        for path in write_outputs(report, out, title):
            print(f"wrote {path}", file=output)
    return 0


def parse_window(since: str, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    return since_of(since, now), since_of(until, now) if until else now


__all__: Sequence[str] = ("parse_window", "replay", "run_replay", "since_of", "table", "write_outputs")
