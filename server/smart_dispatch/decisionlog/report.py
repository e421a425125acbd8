"""`smart-dispatch stats`: the analytics of a running sidecar (`GetStats`) as a funnel table per
channel (or any grouping), with `--out DIR` a CSV and a chart.

    smart-dispatch stats [--target HOST:PORT] [--days 7 | --since DAY --until DAY]
                         [--by channel] [--category C] [--channel C] [--rule R] [--template T]
                         [--out DIR] [--token-env VAR]
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from smart_dispatch.plotting import pyplot, save, text_table

#: the funnel's columns, in order
FUNNEL = ("decided", "sent", "delivered", "opened", "clicked", "converted")


def _rate(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:6.1%}" if denominator else "     -"


def funnel_table(rows: Sequence[Any], group_by: Sequence[str]) -> str:
    """Rows of a `GetStatsResponse` as a table: the counts, the funnel's rates, suppressions
    and deferrals, cost and cost per open."""
    header = [
        *group_by,
        *FUNNEL,
        "open%",
        "click%",
        "conv%",
        "value",
        "suppr.",
        "deferred",
        "cost",
        "cost/open",
    ]
    lines = []
    for row in rows:
        opened = row.opened
        lines.append(
            [
                *(getattr(row, dim) or "-" for dim in group_by),
                *(str(getattr(row, name)) for name in FUNNEL),
                _rate(row.opened, row.sent),
                _rate(row.clicked, row.sent),
                _rate(row.converted, row.sent),
                f"{row.conversion_value:g}",
                str(sum(row.suppressed.values())),
                str(sum(row.deferred.values())),
                f"{row.cost:.4f}",
                f"{row.cost / opened:.4f}" if opened else "-",
            ]
        )
    out = text_table(header, lines, left=len(group_by))
    reasons = _reasons(rows)
    if reasons:
        out.append("")
        out.append("held back, by reason: " + ", ".join(f"{code} {n}" for code, n in reasons))
    return "\n".join(out)


def _reasons(rows: Sequence[Any]) -> list[tuple[str, int]]:
    totals: dict[str, int] = {}
    for row in rows:
        for kind, counts in (("suppressed", row.suppressed), ("deferred", row.deferred)):
            for code, n in counts.items():
                totals[f"{kind}:{code}"] = totals.get(f"{kind}:{code}", 0) + n
    return sorted(totals.items(), key=lambda item: -item[1])


def write_csv(rows: Sequence[Any], group_by: Sequence[str], directory: Path) -> Path:
    path = directory / "stats.csv"
    names = [*FUNNEL, "conversion_value", "bounced", "unsubscribed", "failed", "cost"]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow([*group_by, *names, "suppressed", "deferred"])
        for row in rows:
            writer.writerow(
                [
                    *(getattr(row, dim) for dim in group_by),
                    *(getattr(row, name) for name in names),
                    ";".join(f"{k}={v}" for k, v in sorted(row.suppressed.items())),
                    ";".join(f"{k}={v}" for k, v in sorted(row.deferred.items())),
                ]
            )
    return path


def plot(rows: Sequence[Any], group_by: Sequence[str], directory: Path, title: str) -> Path:
    """stats.png: the funnel per group (bars), and cost per open."""
    plt = pyplot()
    labels = ["/".join(getattr(row, dim) or "-" for dim in group_by) for row in rows]
    figure, (funnel, cost) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(FUNNEL)
    for n, name in enumerate(FUNNEL):
        xs = [i + n * width for i in range(len(rows))]
        funnel.bar(xs, [getattr(row, name) for row in rows], width, label=name)
    funnel.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], labels, rotation=20, ha="right")
    funnel.set(title="Funnel", ylabel="messages")
    funnel.legend(fontsize="small")
    cost.bar(labels, [row.cost / row.opened if row.opened else 0.0 for row in rows], color="tab:red")
    cost.set(title="Cost per open", ylabel="cost unit per open")
    cost.tick_params(axis="x", rotation=20)
    for axes in (funnel, cost):
        axes.grid(alpha=0.3, axis="y")
    return save(plt, figure, directory / "stats.png", title)


def run_stats(
    *,
    target: str,
    days: int,
    since: date | None,
    until: date | None,
    group_by: Sequence[str],
    filters: dict[str, str],
    out: Path | None,
    token: str = "",
    output: TextIO = sys.stdout,
) -> int:
    import grpc

    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

    end = until or datetime.now(UTC).date()
    start = since or end - timedelta(days=max(1, days) - 1)
    request = pb.GetStatsRequest(group_by=list(group_by))
    for dimension, value in filters.items():
        setattr(request, dimension, value)
    request.start.FromDatetime(datetime.combine(start, datetime.min.time(), UTC))
    request.end.FromDatetime(datetime.combine(end, datetime.min.time(), UTC))
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            response = pb_grpc.SmartDispatchServiceStub(channel).GetStats(
                request, metadata=metadata, timeout=30
            )
        except grpc.RpcError as exc:
            print(f"smart-dispatch stats: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    rows = list(response.rows)
    title = f"{start.isoformat()} .. {end.isoformat()} by {', '.join(group_by)}"
    print(title, file=output)
    print(funnel_table(rows, group_by), file=output)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        print(f"wrote {write_csv(rows, group_by, out)}", file=output)
        if rows:
            print(f"wrote {plot(rows, group_by, out, title)}", file=output)
    return 0
