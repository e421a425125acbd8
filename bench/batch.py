"""DecideBatch against single Decide calls, in one run, on one sidecar.

    .venv/bin/python bench/batch.py [--store memory://] [--batch 500] [--seconds 5] [--rounds 3]

One sidecar (`smart-dispatch serve --port 0 --rules rules --store URL`, pinned to the first CPU
when there are two or more; this process, the client, to the others). Interleaved rounds of:
- single: `Decide` calls, 32 in flight on one grpc.aio channel, pre-serialized requests;
- batch: `DecideBatch` calls of `--batch` requests, 2 in flight.
The request mix is the transactional / marketing mix of bench/decide.py's templates, a new
message id and user each. Reported: decisions per second of each (medians), the sidecar's CPU
per decision, and the ratio batch / single (goal >= 4 per core: the limit is the decision's own
CPU cost, which a batch does not share). On Redis also the round trips per decision, as the
server counts them (`INFO stats` total_reads_processed, which includes the bench's own few INFO
calls). Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import MALLOC_ENV, batch_body, forget_keys  # noqa: E402

DECIDE = "/smartdispatch.v1.SmartDispatchService/Decide"
DECIDE_BATCH = "/smartdispatch.v1.SmartDispatchService/DecideBatch"


def redis_reads(store: str) -> int | None:
    """The Redis server's socket reads so far (one per round trip it serves); None off Redis."""
    if not store.startswith("redis://"):
        return None
    import redis

    with redis.Redis.from_url(store) as client:
        return int(client.info("stats")["total_reads_processed"])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests(n: int, tag: str) -> list[bytes]:
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

    out = []
    for i in range(n):
        category = "marketing" if i % 3 else "transactional"
        message = pb.Message(id=f"{tag}-{i}", category=category)
        recipient = pb.Recipient(
            user_id=f"{tag}-u{i}",
            timezone=("UTC", "Asia/Shanghai", "America/New_York")[i % 3],
            addresses={"email": "a@example.com", "sms": "+15550100", "in_app": f"inbox-{i}"},
        )
        out.append(pb.DecideRequest(message=message, recipient=recipient).SerializeToString())
    return out


async def single(channel, payloads: list[bytes], seconds: float) -> int:
    call = channel.unary_unary(DECIDE)
    done, deadline = 0, time.monotonic() + seconds
    pending = iter(payloads)

    async def loop() -> None:
        nonlocal done
        for payload in pending:
            if time.monotonic() > deadline:
                return
            await call(payload, timeout=30)
            done += 1

    await asyncio.gather(*(loop() for _ in range(32)))
    return done


async def batched(channel, payloads: list[bytes], size: int, seconds: float) -> int:
    call = channel.unary_unary(DECIDE_BATCH)
    chunks = iter(payloads[i : i + size] for i in range(0, len(payloads), size))
    done, deadline = 0, time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        for chunk in chunks:
            if time.monotonic() > deadline:
                return
            await call(batch_body(chunk), timeout=60)
            done += len(chunk)

    await asyncio.gather(*(loop() for _ in range(2)))
    return done


async def run(args: argparse.Namespace) -> int:
    import grpc

    cpus = sorted(os.sched_getaffinity(0))
    env = os.environ | MALLOC_ENV | {"PYTHONUNBUFFERED": "1", "SD_KEY_PREFIX": f"sdbatch{os.getpid()}"}
    argv = [sys.executable, "-m", "smart_dispatch", "serve", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--rules", str(ROOT / "rules"), "--store", args.store, "--log-level", "WARNING"]
    pin = ["taskset", "-c", str(cpus[0])] if len(cpus) >= 2 else []
    if len(cpus) >= 2:
        os.sched_setaffinity(0, set(cpus[1:]))
    server = subprocess.Popen([*pin, *argv], env=env, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
    try:
        assert server.stdout is not None
        address = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        per_round = 40_000
        results: dict[str, list[tuple[float, float]]] = {"single": [], "batch": []}
        trips: dict[str, list[float]] = {"single": [], "batch": []}
        async with grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            await single(channel, requests(500, "warm-s"), 1.0)
            await batched(channel, requests(2000, "warm-b"), args.batch, 1.0)
            for round_ in range(args.rounds):
                for kind in ("single", "batch"):
                    payloads = requests(per_round, f"{kind}-{round_}")
                    reads0, cpu0, t0 = redis_reads(args.store), cpu_s(server.pid), time.monotonic()
                    if kind == "single":
                        done = await single(channel, payloads, args.seconds)
                    else:
                        done = await batched(channel, payloads, args.batch, args.seconds)
                    wall, cpu = time.monotonic() - t0, cpu_s(server.pid) - cpu0
                    reads1 = redis_reads(args.store)
                    if reads0 is not None and reads1 is not None:
                        trips[kind].append((reads1 - reads0) / max(1, done))
                    results[kind].append((done / wall, cpu / max(1, done) * 1e6))
                    each_us = cpu / max(1, done) * 1e6
                    print(f"  {kind:<6} round {round_ + 1}: {done / wall:7.0f}/s, {each_us:5.0f} µs each")
        rate = {k: statistics.median(r for r, _ in v) for k, v in results.items()}
        cost = {k: statistics.median(c for _, c in v) for k, v in results.items()}
        print(
            f"\nmedians of {args.rounds} x {args.seconds:g} s | store {args.store} | batches of {args.batch}"
        )
        for kind in ("single", "batch"):
            line = f"{kind:<6} {rate[kind]:8.0f} decisions/s  {cost[kind]:5.0f} µs sidecar CPU per decision"
            if trips[kind]:
                line += f"  {statistics.median(trips[kind]):5.2f} Redis round trips per decision"
            print(line)
        ratio = rate["batch"] / rate["single"]
        verdict = "MET" if ratio >= 4 else "NOT MET"
        print(f"DecideBatch / Decide: {ratio:.2f}x decisions/s (goal >= 4x per core: {verdict})")
        return 0
    finally:
        server.terminate()
        server.wait(timeout=10)
        if args.store.startswith("redis"):
            forget_keys(args.store, env["SD_KEY_PREFIX"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
