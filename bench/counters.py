"""Frequency-cap decisions on Redis: our one-script `reserve` against the `limits` library.

One decision = three per-user caps (1/hour, 3/day, 10/week). Ours checks and records all three
atomically in ONE EVALSHA (`RedisCounterStore.reserve`); `limits` needs one `hit` per limit
(3 EVALSHA, and no all-or-nothing across them), with its moving-window and sliding-window-counter
strategies. Every implementation runs against the SAME Redis in the same run, on the same
workload: decision i is for user `u{i % users}` with a new message id, so the first pass over the
users is admitted and later ones mostly refused (like real traffic: both paths are measured).

Fair comparison: both sides use redis-py's asyncio client (hiredis parser when installed) built
by the SAME factory as the service (`stores.redis.redis_client`: same socket timeouts, no retries,
default connection pool), the same worker loop and the same number of decisions in flight.
`ours-defer` (same workload, `defer=True`: refused decisions are deferred, i.e. recorded at their
earliest instant, in the same single EVALSHA) is informational; the ratios use `ours`.

Each (implementation, concurrency) cell is run `--rounds` times on a flushed database, in
interleaved order; the medians are reported (the machine is noisy). Round trips per decision
are counted from Redis itself (INFO commandstats: EVALSHA calls) and, for ours, by the store;
server time per decision is INFO commandstats' EVALSHA usec divided by the decisions.

    .venv/bin/python bench/counters.py                      # starts a private redis-server
    .venv/bin/python bench/counters.py --redis-url redis://127.0.0.1:6379/15   # flushes db 15!
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
import redis.utils
from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerHour
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter, RateLimiter, SlidingWindowCounterRateLimiter
from smart_dispatch.counters.base import CapSpec, ReserveRequest
from smart_dispatch.counters.redis import RedisCounterStore
from smart_dispatch.stores.redis import redis_client

CAPS = (CapSpec("hour", 1, 3600.0), CapSpec("day", 3, 86400.0), CapSpec("week", 10, 7 * 86400.0))
LIMITS: tuple[RateLimitItem, ...] = (
    RateLimitItemPerHour(1),
    RateLimitItemPerDay(3),
    RateLimitItemPerDay(10, 7),
)
IMPLEMENTATIONS = ("ours", "ours-defer", "limits-moving", "limits-sliding")
BASELINES = ("limits-moving", "limits-sliding")
TARGET = 3.0  # the target: ours >= 3x the throughput of `limits` for 3 caps
CLIENT_TIMEOUT_S = 1.0

Decide = Callable[[int], Awaitable[object]]


@dataclass(frozen=True)
class Sample:
    decisions_per_s: float
    p50_ms: float
    p99_ms: float
    evalsha_per_decision: float
    server_us_per_decision: float  # EVALSHA time inside Redis (INFO commandstats usec)
    store_round_trips: float | None  # ours only


@contextmanager
def private_redis() -> Iterator[str]:
    """A throw-away redis-server on a free port (no persistence); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found on PATH: install it or pass --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="sd-bench-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*args, "--dir", directory], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=port) as client:
                    client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def evalsha_stats(url: str) -> tuple[int, int]:
    """EVALSHA calls and their total time inside Redis (usec) so far."""
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def flush(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushdb()


async def drive(decide: Decide, decisions: int, in_flight: int) -> tuple[float, list[float]]:
    """Run `decisions` calls with `in_flight` workers; wall time (s) and per-call latencies (s)."""
    latencies: list[float] = []
    next_index = iter(range(decisions))

    async def worker() -> None:
        for i in next_index:
            started = time.perf_counter()
            await decide(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started, latencies


async def measure(url: str, impl: str, round_no: int, decisions: int, in_flight: int, users: int) -> Sample:
    flush(url)
    store: RedisCounterStore | None = None
    client = None
    storage: RedisStorage | None = None
    decide: Decide
    if impl.startswith("ours"):
        client = redis_client(url, CLIENT_TIMEOUT_S)
        store = RedisCounterStore(client, prefix="bench", timeout_s=1.0)
        ours, defer = store, impl == "ours-defer"

        async def decide_ours(i: int) -> object:
            request = ReserveRequest(f"u{i % users}", f"m{round_no}-{i}", (CAPS,), defer=defer)
            return await ours.reserve(request)

        decide = decide_ours
    else:
        # the same client factory, hence the same pool and socket settings, as ours
        pool = redis_client(url, CLIENT_TIMEOUT_S).connection_pool
        storage = RedisStorage("async+" + url, implementation="redispy", connection_pool=pool)
        limiter: RateLimiter = (
            MovingWindowRateLimiter(storage)
            if impl == "limits-moving"
            else SlidingWindowCounterRateLimiter(storage)
        )

        async def decide_limits(i: int) -> object:
            user = f"u{i % users}"
            return [await limiter.hit(item, user) for item in LIMITS]

        decide = decide_limits
    try:
        await drive(decide, min(200, decisions), in_flight)  # warm up: connections, SCRIPT LOAD
        flush(url)
        before_calls, before_usec = evalsha_stats(url)
        before_trips = store.round_trips if store else 0
        elapsed, latencies = await drive(decide, decisions, in_flight)
        after_calls, after_usec = evalsha_stats(url)
        latencies.sort()
        return Sample(
            decisions / elapsed,
            statistics.median(latencies) * 1000,
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            (after_calls - before_calls) / decisions,
            (after_usec - before_usec) / decisions,
            (store.round_trips - before_trips) / decisions if store else None,
        )
    finally:
        if store is not None:
            await store.close()
        if client is not None:
            await client.aclose()
        if storage is not None:
            await storage.bridge.storage.aclose()
            await storage.bridge.storage.connection_pool.disconnect()


def median_sample(samples: list[Sample]) -> Sample:
    trips = [s.store_round_trips for s in samples if s.store_round_trips is not None]
    return Sample(
        statistics.median(s.decisions_per_s for s in samples),
        statistics.median(s.p50_ms for s in samples),
        statistics.median(s.p99_ms for s in samples),
        statistics.median(s.evalsha_per_decision for s in samples),
        statistics.median(s.server_us_per_decision for s in samples),
        statistics.median(trips) if trips else None,
    )


async def run(url: str, decisions: int, rounds: int, users: int, concurrency: list[int]) -> bool:
    """Prints the table; True when every cell meets the target and ours takes 1 round trip."""
    parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "python (hiredis missing!)"
    print(
        f"redis {url}; {decisions} decisions x {rounds} rounds per cell (medians), {users} users, "
        f"caps 1/h 3/d 10/w; redis-py {redis.__version__}, parser {parser}"
    )
    print(f"{'in flight':>9}  {'implementation':<16} {'decisions/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'EVALSHA/dec':>11} {'server us/dec':>13} {'store trips/dec':>15}")  # fmt: skip
    met = True
    for in_flight in concurrency:
        samples: dict[str, list[Sample]] = {impl: [] for impl in IMPLEMENTATIONS}
        for round_no in range(rounds):
            for impl in IMPLEMENTATIONS:  # interleaved so drift hits every implementation alike
                samples[impl].append(await measure(url, impl, round_no, decisions, in_flight, users))
        medians = {impl: median_sample(found) for impl, found in samples.items()}
        for impl, m in medians.items():
            trips = "-" if m.store_round_trips is None else f"{m.store_round_trips:.2f}"
            print(
                f"{in_flight:>9}  {impl:<16} {m.decisions_per_s:>11.0f} {m.p50_ms:>8.3f} {m.p99_ms:>8.3f} "
                f"{m.evalsha_per_decision:>11.2f} {m.server_us_per_decision:>13.1f} {trips:>15}"
            )
            if impl.startswith("ours") and (m.store_round_trips != 1.0 or m.evalsha_per_decision != 1.0):
                print(f"{in_flight:>9}  !! {impl}: expected exactly 1 round trip per decision")
                met = False
        ours = medians["ours"]
        for other in BASELINES:
            them = medians[other]
            speedup = ours.decisions_per_s / them.decisions_per_s
            met = met and speedup >= TARGET
            print(
                f"{in_flight:>9}  ours/{other}: throughput x{speedup:.2f} "
                f"({'meets' if speedup >= TARGET else 'MISSES'} x{TARGET:.0f}), "
                f"p50 x{ours.p50_ms / them.p50_ms:.2f}, p99 x{ours.p99_ms / them.p99_ms:.2f}"
            )
    print(f"target ours >= x{TARGET:.0f} limits' throughput, 1 round trip per decision: "
          f"{'met' if met else 'NOT met'}")  # fmt: skip
    return met


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--redis-url", help="use this Redis (its database is FLUSHED); default: a private one"
    )
    parser.add_argument("--decisions", type=int, default=2000, help="decisions per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per cell (medians reported)")
    parser.add_argument("--users", type=int, default=500, help="distinct users the decisions cycle over")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 32], help="concurrency levels")
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(run(args.redis_url, args.decisions, args.rounds, args.users, args.in_flight))
        return
    with private_redis() as url:
        asyncio.run(run(url, args.decisions, args.rounds, args.users, args.in_flight))


if __name__ == "__main__":
    main()
