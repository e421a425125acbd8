"""The decision's own CPU, without the network: where the hot path's time goes.

    .venv/bin/python bench/hotpath.py [--store memory://] [--decisions 5000] [--rounds 5]
                                      [--profile N]

In one process and one event loop, the sidecar's runtime (built from the settings, as `serve`
builds it: the rules in rules/, the store, telemetry with the decision log on) answers Decide
requests the way the gRPC handler does, minus the transport: parse the request bytes, convert,
decide, convert back, serialize, then one turn of the event loop (so background work such as
the decision log's flush runs between calls, as it does in the server). The requests are
bench/decide.py's stream (70% marketing to
new users, 20% otp, 10% transactional over a pool of users; every message id unique).

Baseline in the same run: the same bytes parsed and a response serialized (the protobuf work
any handler does). Reported: CPU µs per decision (median of rounds), the baseline, and their
ratio. `--profile N` adds one cProfile run of N decisions and prints the top functions by own
time and by cumulative time (our modules).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

from benchlib import MALLOC_ENV, ROOT
from decide import RequestStream, request_templates

os.environ.update(MALLOC_ENV)  # read by glibc at start-up only: effective for child processes


async def build(store: str, decision_log: bool, gc_tuning: bool) -> object:
    from smart_dispatch.config import Settings
    from smart_dispatch.rules.active import ActiveRules
    from smart_dispatch.runtime import Runtime

    settings = Settings(
        rules_dir=ROOT / "rules",
        store_url=store,
        decision_log=decision_log,
        key_prefix="sdhot",
        gc_tuning=gc_tuning,
    )
    rules = ActiveRules.for_settings(settings)
    runtime = await Runtime.build(settings, rules)
    runtime.serving()
    return runtime


async def run(args: argparse.Namespace) -> int:
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
    from smart_dispatch.api.convert import decide_request, decide_response
    from smart_dispatch.heap import pin_malloc_thresholds

    pin_malloc_thresholds()
    runtime = await build(args.store, not args.log_off, not args.gc_off)
    collections = GcWatch()
    decider = runtime.decider  # type: ignore[attr-defined]
    templates, cycle = request_templates()
    stream = RequestStream(templates, cycle, f"h{os.getpid() % 10000:04d}")

    each: list[float] = []  # CPU of every decision, ns: the tail shows pauses (GC, flushes)

    async def decisions(count: int) -> float:
        payloads = [stream.next() for _ in range(count)]
        await asyncio.sleep(0)
        cpu = time.process_time()
        clock = time.thread_time_ns
        for payload in payloads:
            t0 = clock()
            request = pb.DecideRequest.FromString(payload)
            decision = await decider.decide(decide_request(request))
            decide_response(decision).SerializeToString()
            each.append(clock() - t0)
            await asyncio.sleep(0)  # the loop turns between calls, as in the server (log flushes)
        await asyncio.sleep(0.3)  # let the decision log flush: its cost belongs to the decisions
        return (time.process_time() - cpu) / count * 1e6

    def protobuf_only(count: int) -> float:
        payloads = [stream.next() for _ in range(count)]
        response = pb.DecideResponse(decision_id="d" * 32, verdict=pb.VERDICT_SEND, matched_rules=["a", "b"])
        cpu = time.process_time()
        for payload in payloads:
            pb.DecideRequest.FromString(payload)
            response.SerializeToString()
        return (time.process_time() - cpu) / count * 1e6

    try:
        await decisions(min(2000, args.decisions))  # warm-up: memos, prior, first users
        each.clear()
        collections.reset()
        costs, bases = [], []
        for round_ in range(args.rounds):
            costs.append(await decisions(args.decisions))
            bases.append(protobuf_only(args.decisions))
            print(
                f"  round {round_ + 1}: {costs[-1]:6.1f} µs CPU per decision, "
                f"protobuf alone {bases[-1]:5.1f} µs",
                flush=True,
            )
        cost, base = statistics.median(costs), statistics.median(bases)
        print(
            f"hot path ({args.store}, decision log {'off' if args.log_off else 'on'}): "
            f"{cost:.0f} µs CPU per decision (median of {args.rounds} x {args.decisions}; rounds "
            f"{min(costs):.0f}-{max(costs):.0f}); protobuf parse + serialize alone {base:.1f} µs; "
            f"ratio {cost / base:.0f}x"
        )
        ordered = sorted(each)

        def q(share: float) -> float:
            return ordered[min(len(ordered) - 1, int(share * len(ordered)))] / 1e3

        print(
            f"one decision's CPU (thread time, {len(ordered)} decisions): p50 {q(0.5):.0f} µs, "
            f"p99 {q(0.99):.0f} µs, p99.9 {q(0.999):.0f} µs, max {ordered[-1] / 1e3:.0f} µs "
            f"(gc tuning {'off' if args.gc_off else 'on'})"
        )
        print(f"garbage collections during the rounds: {collections.summary()}")
        if args.profile:
            profiler = cProfile.Profile()
            payloads = [stream.next() for _ in range(args.profile)]
            profiler.enable()
            for payload in payloads:
                request = pb.DecideRequest.FromString(payload)
                decision = await decider.decide(decide_request(request))
                decide_response(decision).SerializeToString()
            await asyncio.sleep(0.3)
            profiler.disable()
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats("smart_dispatch", 35)
    finally:
        await runtime.close()  # type: ignore[attr-defined]
        runtime.rules.close()  # type: ignore[attr-defined]
    return 0


class GcWatch:
    """Counts the collector's passes per generation and the longest of each (gc.callbacks)."""

    def __init__(self) -> None:
        self.reset()
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.passes = [0, 0, 0]
        self.longest_ms = [0.0, 0.0, 0.0]
        self.total_ms = [0.0, 0.0, 0.0]
        self._started = 0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time_ns()  # CPU: a pass preempted by another process is not longer
            return
        generation = info["generation"]
        took = (time.thread_time_ns() - self._started) / 1e6
        self.passes[generation] += 1
        self.total_ms[generation] += took
        self.longest_ms[generation] = max(self.longest_ms[generation], took)

    def summary(self) -> str:
        return ", ".join(
            f"gen {g}: {self.passes[g]} passes, {self.total_ms[g]:.0f} ms in all, "
            f"longest {self.longest_ms[g]:.1f} ms"
            for g in range(3)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--decisions", type=int, default=5000, help="decisions per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--log-off", action="store_true", help="SD_DECISION_LOG=false")
    parser.add_argument("--gc-off", action="store_true", help="SD_GC_TUNING=false (CPython's defaults)")
    parser.add_argument("--profile", type=int, default=0, help="also profile N decisions with cProfile")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
