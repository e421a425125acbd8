"""What a simulation shows: a table per policy, the goals checked, a CSV and plots."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smart_dispatch.plotting import pyplot, save
from smart_dispatch.simulate.runner import PolicyResult


@dataclass(frozen=True, slots=True)
class Summary:
    policy: str
    opens: int
    opens_last_third: int
    conversions: int
    value: float
    cost: float
    cost_per_open: float
    unsubscribes: int
    messages_per_user_day: float
    violations: int
    seconds: float
    peak_distance_h: float  # last third: mean hours between a delivery and the person's peak
    best_channel: float  # last third: share of deliveries on the person's best channel


def summarise(result: PolicyResult) -> Summary:
    d = result.daily
    days = len(d.opened)
    last = slice(days - days // 3 if days >= 3 else 0, days)
    opens = sum(d.opened)
    cost = sum(d.cost)
    return Summary(
        result.policy,
        opens,
        sum(d.opened[last]),
        sum(d.converted),
        sum(d.value),
        cost,
        cost / opens if opens else float("inf"),
        sum(d.unsubscribed),
        sum(d.sent) / max(1, result.users * days),
        result.violations,
        result.seconds,
        result.late_peak_distance_h / max(1, result.late_deliveries),
        result.late_best_channel / max(1, result.late_deliveries),
    )


def table(summaries: Sequence[Summary]) -> str:
    head = (
        f"{'policy':<8} {'opens':>8} {'last 1/3':>9} {'conv':>7} {'cost':>9} {'cost/open':>10} "
        f"{'unsubs':>7} {'msg/u/d':>8} {'violations':>10} {'from peak':>9} {'best ch':>8} {'seconds':>8}"
    )
    rows = [head, "-" * len(head)]
    for s in summaries:
        rows.append(
            f"{s.policy:<8} {s.opens:>8} {s.opens_last_third:>9} {s.conversions:>7} {s.cost:>9.2f} "
            f"{s.cost_per_open:>10.4f} {s.unsubscribes:>7} {s.messages_per_user_day:>8.2f} "
            f"{s.violations:>10} {s.peak_distance_h:>8.1f}h {s.best_channel:>8.0%} {s.seconds:>8.1f}"
        )
    return "\n".join(rows)


def goals(summaries: Sequence[Summary]) -> list[tuple[str, bool]]:
    """The learned policy's goals against the oracle and the static rules (last third of days)."""
    by = {s.policy: s for s in summaries}
    out: list[tuple[str, bool]] = []
    learned, oracle, static = by.get("learned"), by.get("oracle"), by.get("static")
    if learned and oracle:
        share = learned.opens_last_third / max(1, oracle.opens_last_third)
        out.append(
            (
                f"learned reaches {share:.0%} of the oracle's opens over the last third (goal >= 85%)",
                share >= 0.85,
            )
        )
    if learned and static:
        gain = learned.opens_last_third / max(1, static.opens_last_third) - 1
        out.append(
            (
                f"learned gets {gain:+.0%} opens against the static rules over the last third (goal >= +30%)",
                gain >= 0.30,
            )
        )
        costs = f"{learned.cost_per_open:.4f} vs static {static.cost_per_open:.4f}"
        out.append(
            (f"learned's cost per open {costs} (goal <=)", learned.cost_per_open <= static.cost_per_open)
        )
    violations = sum(s.violations for s in summaries)
    out.append((f"{violations} cap and quiet-hour violations (goal 0)", violations == 0))
    return out


def write_csv(results: Sequence[PolicyResult], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "daily.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            [
                "policy",
                "day",
                "sent",
                "delivered",
                "opened",
                "converted",
                "value",
                "cost",
                "unsubscribed",
                "suppressed",
            ]
        )
        for r in results:
            d = r.daily
            for day in range(len(d.sent)):
                writer.writerow(
                    [r.policy, day + 1, d.sent[day], d.delivered[day], d.opened[day], d.converted[day],
                     round(d.value[day], 4), round(d.cost[day], 6), d.unsubscribed[day], d.suppressed[day]]
                )  # fmt: skip
    return path


def write_summary_csv(summaries: Sequence[Summary], directory: Path) -> Path:
    path = directory / "summary.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(list(Summary.__dataclass_fields__))
        for s in summaries:
            writer.writerow([getattr(s, name) for name in Summary.__dataclass_fields__])
    return path


def plot(results: Sequence[PolicyResult], directory: Path, title: str) -> Path:
    """daily.png: the daily open rate (opens per message sent) and the cumulative cost.
    Raises `ConfigurationError` when matplotlib is not installed (`pip install smart-dispatch[sim]`)."""
    plt = pyplot()
    figure, (rates, costs) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        d = r.daily
        days = list(range(1, len(d.sent) + 1))
        rates.plot(days, [o / s if s else 0.0 for o, s in zip(d.opened, d.sent, strict=True)], label=r.policy)
        total, cumulative = 0.0, []
        for cost in d.cost:
            total += cost
            cumulative.append(total)
        costs.plot(days, cumulative, label=r.policy)
    rates.set(title="Daily open rate (marketing)", xlabel="day", ylabel="opens / messages sent")
    costs.set(title="Cumulative cost (marketing)", xlabel="day", ylabel="cost")
    for axes in (rates, costs):
        axes.grid(alpha=0.3)
        axes.legend()
    return save(plt, figure, directory / "daily.png", title)
