"""`smart-dispatch simulate`: policies compared on a simulated population (see runner.py)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from smart_dispatch.simulate.report import goals, plot, summarise, table, write_csv, write_summary_csv
from smart_dispatch.simulate.runner import POLICIES, PolicyResult, run_policy
from smart_dispatch.simulate.scenario import Scenario, load_scenario

__all__ = ["POLICIES", "load_scenario", "run_policy", "simulate"]


def _one(scenario: Scenario, policy: str, seed: int, store_url: str) -> PolicyResult:
    return asyncio.run(run_policy(scenario, policy, seed, store_url))


def simulate(
    scenario_path: Path,
    *,
    seed: int = 7,
    out: Path | None = None,
    policies: Sequence[str] = POLICIES,
    store_url: str = "memory://",
    processes: int = 2,
) -> int:
    """Run every policy (in `processes` worker processes), print the table and the goals, write
    daily.csv, summary.csv and daily.png to `out`. Returns 0, or 1 when a goal is missed."""
    scenario = load_scenario(scenario_path)
    what = f"{scenario.users} people, {scenario.days} days, policies {', '.join(policies)}"
    print(f"scenario {scenario.name}: {what}", file=sys.stderr)
    if processes > 1 and len(policies) > 1:
        with ProcessPoolExecutor(max_workers=processes) as pool:
            futures = [pool.submit(_one, scenario, policy, seed, store_url) for policy in policies]
            results = [future.result() for future in futures]
    else:
        results = [_one(scenario, policy, seed, store_url) for policy in policies]
    summaries = [summarise(r) for r in results]
    print(table(summaries))
    checked = goals(summaries)
    for text, met in checked:
        print(f"{'met ' if met else 'MISS'}  {text}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        written = [
            write_csv(results, out),
            write_summary_csv(summaries, out),
            plot(results, out, scenario.name),
        ]
        print("wrote " + ", ".join(str(p) for p in written))
    return 0 if all(met for _, met in checked) else 1
