"""The sidecar's resident memory over 1,000,000 decisions to 100,000 people (issue 14, "Memory").

    .venv/bin/python bench/memory.py [--decisions 1000000] [--users 100000] [--every 100000]
                                     [--days 70] [--batch 1000] [--in-flight 2] [--opens 0.15]
                                     [--seed 14] [--out DIR] [--no-pin]

Starts the real sidecar as a subprocess, as `make serve` does plus the request clock:

    smart-dispatch serve --host 127.0.0.1 --port 0 --rules rules --store memory:// \\
        --log-level WARNING --allow-request-clock

(the Makefile's malloc thresholds, pinned to the first CPU when there are two or more; this
process, the client, to the others), and decides `--decisions` messages through `DecideBatch`
calls of `--batch`, `--in-flight` calls at a time. Every message id is new; each message goes to
one of `--users` people drawn at random (fixed seed), 70 % marketing, 20 % otp, 10 %
transactional, as in bench/decide.py; each person keeps one timezone, locale, plan, addresses
and a typical gap between their app sessions (their `last_active_at` follows the clock).

The clock is the request clock (`DecideRequest.at`): the run starts now and spreads the
decisions evenly over `--days` simulated days (default 70: 100,000 decisions a simulated week,
each person a message every week or so), so the caps' windows (1 h, 24 h), the engagement
model's message records (7 days) and everything else with a time limit really pass during the
run, and what expires must be swept for memory to stay flat. After each batch, some of the
messages sent get an OPENED event (share `--opens`, by channel: in-app the most, SMS the
least), a quarter of those a CLICKED as well, and some people an ACTIVE event, through
`ReportEvent` calls (occurred_at: a few minutes after the send), so behaviour state exists.

Every `--every` decisions (when the calls in flight are answered and the decision log had time
to flush) it reads the sidecar's VmRSS from /proc/PID/status and prints a progress line; at the
end a table (decisions, simulated day, RSS MiB, ratio to the RSS after the first checkpoint) and
the verdict against the goal: RSS after 1,000,000 decisions within +-10 % of the RSS after
100,000. `--out DIR` writes `memory.csv` and `memory.png` (needs matplotlib, the `[sim]` extra).
Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import MALLOC_ENV, launch  # noqa: E402

GOAL = 0.10  # RSS after the last checkpoint within +-10 % of the RSS after the first
MARKER = "smart-dispatch listening on"
ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Shanghai",
    "Asia/Kolkata",
    "America/Los_Angeles",
    "Australia/Sydney",
    "America/Sao_Paulo",
)
#: share of the messages sent on a channel that get opened (then a quarter of those clicked)
OPEN_WEIGHT = {"in_app": 2.0, "push": 1.5, "email": 1.0, "wechat": 1.0, "sms": 0.4, "webhook": 0.0}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    decisions: int
    sim_day: float
    rss_mib: float
    hwm_mib: float
    elapsed_s: float
    events: int
    errors: int


def status_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MiB, from /proc/PID/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class Workload:
    """The requests and the events, reproducible from the seed. Instants are epoch seconds on
    the simulated clock: decision `i` is decided at `start_s + i * step_s`."""

    def __init__(self, args: argparse.Namespace, start_s: float, tag: str) -> None:
        from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

        self.pb = pb
        self.rng = random.Random(args.seed)  # the requests' dice, drawn in index order
        self.seed = args.seed
        self.start_s = start_s
        self.step_s = args.days * 86400.0 / args.decisions
        self.opens = args.opens
        self.tag = tag
        self.users = args.users
        rng = random.Random(args.seed + 1)
        # Per person: their recipient (serialized, without attributes) and the mean gap between
        # their app sessions in days (None: never seen active, no last_active_at).
        self._recipients: list[bytes] = []
        self._gaps: list[float | None] = []
        self._plans: list[str] = []
        for index in range(args.users):
            addresses = {"email": f"p{index}@example.com", "sms": f"+4915{index:09d}"}
            if rng.random() < 0.8:
                addresses["in_app"] = f"inbox-{tag}-{index}"
            if rng.random() < 0.4:
                addresses["push"] = f"push-token-{tag}-{index}"
            recipient = pb.Recipient(
                user_id=f"u-{tag}-{index:06d}",
                timezone=ZONES[index % len(ZONES)],
                locale=rng.choice(("en-US", "de-DE", "zh-CN", "pt-BR")),
                addresses=addresses,
            )
            self._recipients.append(recipient.SerializeToString())
            self._gaps.append(None if rng.random() < 0.25 else rng.choice((0.2, 0.5, 1.5, 4.0, 12.0, 40.0)))
            self._plans.append(rng.choice(("free", "pro", "team")))

    def at(self, index: int) -> float:
        return self.start_s + index * self.step_s

    def request(self, index: int) -> tuple[Any, int]:
        """DecideRequest number `index` (0-based) and its person's index."""
        pb, rng = self.pb, self.rng
        person = rng.randrange(self.users)
        draw = rng.random()
        category = "marketing" if draw < 0.7 else "otp" if draw < 0.9 else "transactional"
        request = pb.DecideRequest()
        request.message.id = f"m-{self.tag}-{index:07d}"
        request.message.category = category
        request.message.template = f"{category}_{index % 3}"
        if category == "marketing":
            request.message.labels["campaign"] = f"week-{int(index * self.step_s // (7 * 86400))}"
        request.recipient.MergeFromString(self._recipients[person])
        now_s = self.at(index)
        attributes = {"plan": self._plans[person], "vip": person % 20 == 0}
        gap = self._gaps[person]
        if gap is not None:
            seen = now_s - gap * 86400.0 * rng.random() * 2
            attributes["last_active_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seen))
        request.recipient.attributes.update(attributes)
        request.at.FromNanoseconds(int(now_s * 1e9))
        return request, person

    def events(self, requests: list[Any], response: Any, first: int) -> list[Any]:
        """ReportEvent requests for a batch's answers: opens (some clicked) of what was sent or
        deferred, a few minutes after its send instant; an ACTIVE session for some openers.
        `first` is the batch's first index: its own dice, whatever order batches finish in."""
        pb, rng = self.pb, random.Random(self.seed * 1_000_003 + first)
        out = []
        for request, result in zip(requests, response.results, strict=True):
            if result.WhichOneof("result") != "decision":
                continue
            decision = result.decision
            if decision.verdict == pb.VERDICT_SUPPRESS or not decision.steps:
                continue
            channel = decision.steps[0].channel
            if rng.random() >= self.opens * OPEN_WEIGHT.get(channel, 0.0):
                continue
            user, message = request.recipient.user_id, request.message.id
            opened_ns = decision.send_at.ToNanoseconds() + int(rng.uniform(60, 3600) * 1e9)
            kinds = [pb.EVENT_KIND_OPENED]
            if rng.random() < 0.25:
                kinds.append(pb.EVENT_KIND_CLICKED)
            for kind in kinds:
                event = pb.ReportEventRequest(user_id=user, message_id=message, channel=channel, kind=kind)
                event.occurred_at.FromNanoseconds(opened_ns)
                out.append(event)
            if rng.random() < 0.3:
                active = pb.ReportEventRequest(user_id=user, kind=pb.EVENT_KIND_ACTIVE)
                active.occurred_at.FromNanoseconds(opened_ns)
                out.append(active)
        return out


async def drive(args: argparse.Namespace, address: str, pid: int, workload: Workload) -> list[Checkpoint]:
    import grpc
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as rpc

    pb = workload.pb
    checkpoints: list[Checkpoint] = []
    counters = {"events": 0, "errors": 0}
    first_errors: list[str] = []
    started = time.monotonic()
    options = [("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = rpc.SmartDispatchServiceStub(channel)
        done = 0
        while done < args.decisions:
            target = min(args.decisions, done + args.every)
            starts = range(done, target, args.batch)
            chunks = iter(range(start, min(target, start + args.batch)) for start in starts)

            async def lane(chunks: Iterator[range]) -> None:
                for indices in chunks:  # built as taken: the requests do not depend on timing
                    requests = [workload.request(i)[0] for i in indices]
                    response = await stub.DecideBatch(pb.DecideBatchRequest(requests=requests), timeout=120)
                    for result in response.results:
                        if result.WhichOneof("result") == "error":
                            counters["errors"] += 1
                            if len(first_errors) < 5:
                                first_errors.append(f"{result.error.code}: {result.error.message}")
                    events = workload.events(requests, response, indices.start)
                    await asyncio.gather(*(stub.ReportEvent(e, timeout=60) for e in events))
                    counters["events"] += len(events)

            await asyncio.gather(*(lane(chunks) for _ in range(args.in_flight)))
            done = target
            await asyncio.sleep(args.settle)  # the decision log flushes every 250 ms
            rss, hwm = status_mib(pid)
            elapsed = time.monotonic() - started
            point = Checkpoint(
                done,
                (workload.at(done) - workload.start_s) / 86400,
                rss,
                hwm,
                elapsed,
                counters["events"],
                counters["errors"],
            )
            checkpoints.append(point)
            base = checkpoints[0].rss_mib
            print(
                f"  {done:>9,} decisions  day {point.sim_day:5.1f}  RSS {rss:7.1f} MiB "
                f"(x{rss / base:.3f})  peak {hwm:7.1f} MiB  {point.events:>8,} events  "
                f"{elapsed:6.0f} s  {done / elapsed:6.0f} decisions/s",
                flush=True,
            )
    for line in first_errors:
        print(f"  item error: {line}")
    return checkpoints


def report(args: argparse.Namespace, points: list[Checkpoint]) -> bool:
    from smart_dispatch.plotting import text_table

    base, last = points[0], points[-1]
    rows = [
        [f"{p.decisions:,}", f"{p.sim_day:.1f}", f"{p.rss_mib:.1f}", f"{p.rss_mib / base.rss_mib:.3f}"]
        for p in points
    ]
    print()
    for line in text_table(["decisions", "simulated day", "RSS MiB", f"vs {base.decisions:,}"], rows):
        print(line)
    ratio = last.rss_mib / base.rss_mib
    met = abs(ratio - 1) <= GOAL
    worst = max(points, key=lambda p: abs(p.rss_mib / base.rss_mib - 1))
    print(
        f"\nRSS after {last.decisions:,} decisions: {last.rss_mib:.1f} MiB, x{ratio:.3f} of the "
        f"{base.rss_mib:.1f} MiB after {base.decisions:,} (goal within +-{GOAL:.0%}: "
        f"{'MET' if met else 'NOT MET'}); furthest checkpoint {worst.decisions:,}: "
        f"x{worst.rss_mib / base.rss_mib:.3f}; peak {last.hwm_mib:.1f} MiB"
    )
    print(
        f"{last.decisions:,} decisions to {args.users:,} people over {args.days:g} simulated days, "
        f"{last.events:,} events, {last.errors:,} item errors, {last.elapsed_s:.0f} s "
        f"({last.decisions / last.elapsed_s:.0f} decisions/s)"
    )
    if args.out is not None:
        write_outputs(args.out, points)
    return met


def write_outputs(out: Path, points: list[Checkpoint]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "memory.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["decisions", "simulated_day", "rss_mib", "hwm_mib", "elapsed_s", "events"])
        for p in points:
            writer.writerow(
                [
                    p.decisions,
                    f"{p.sim_day:.2f}",
                    f"{p.rss_mib:.1f}",
                    f"{p.hwm_mib:.1f}",
                    f"{p.elapsed_s:.1f}",
                    p.events,
                ]
            )
    from smart_dispatch.errors import ConfigurationError
    from smart_dispatch.plotting import pyplot, save

    try:
        plt = pyplot()
    except ConfigurationError as exc:
        print(f"no plot: {exc}")
        return
    figure, axes = plt.subplots(figsize=(8, 4.5))
    base = points[0].rss_mib
    xs = [p.decisions for p in points]
    axes.axhspan(base * (1 - GOAL), base * (1 + GOAL), color="tab:green", alpha=0.12, label="goal: +-10 %")
    axes.plot(xs, [p.rss_mib for p in points], marker="o", label="RSS")
    axes.set_xlabel("decisions")
    axes.set_ylabel("MiB")
    axes.set_ylim(bottom=0)
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    path = save(plt, figure, out / "memory.png", "Sidecar RSS over decisions (memory store)")
    print(f"wrote {out / 'memory.csv'} and {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--decisions", type=int, default=1_000_000, help="decisions in all (default 1,000,000)")
    add("--users", type=int, default=100_000, help="distinct people (default 100,000)")
    add("--every", type=int, default=100_000, help="decisions between RSS samples (default 100,000)")
    add("--days", type=float, default=70.0, help="simulated days the decisions span (default 70)")
    add("--batch", type=int, default=1000, help="requests per DecideBatch call (at most 1,000)")
    add("--in-flight", type=int, default=2, help="DecideBatch calls in flight (default 2)")
    add("--opens", type=float, default=0.15, help="share of e-mails sent that get opened (default 0.15)")
    add("--settle", type=float, default=1.0, help="seconds before each RSS sample (default 1)")
    add("--seed", type=int, default=14)
    add("--store", default="memory://", help="store URL (default memory://)")
    add("--out", type=Path, default=None, help="write memory.csv and memory.png there")
    add("--no-pin", dest="pin", action="store_false", help="do not pin the sidecar to CPU 0")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= 1000:
        parser.error("--batch: 1 to 1,000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    executable = Path(sys.executable).with_name("smart-dispatch")
    argv_ = [str(executable)] if executable.exists() else [sys.executable, "-m", "smart_dispatch"]
    argv_ += ["serve", "--host", "127.0.0.1", "--port", "0", "--rules", str(ROOT / "rules")]
    argv_ += ["--store", args.store, "--log-level", "WARNING", "--allow-request-clock"]
    env = os.environ | MALLOC_ENV | {"PYTHONUNBUFFERED": "1"}
    tag = f"{os.getpid() % 100000:05d}"
    start_s = float(int(time.time() // 3600) * 3600)
    print(f"building {args.users:,} people ...", flush=True)
    workload = Workload(args, start_s, tag)
    process, log = launch(argv_, env, {cpus[0]} if pin else None)
    try:
        if pin:
            os.sched_setaffinity(0, set(cpus[1:]))
        assert process.stdout is not None
        line = process.stdout.readline()
        if MARKER not in line:
            log.seek(0)
            raise SystemExit(f"the sidecar did not start ({' '.join(argv_)}):\n{line}{log.read()[-3000:]}")
        address = line.split(MARKER, 1)[1].strip()
        rss, _ = status_mib(process.pid)
        print(
            f"smart-dispatch memory benchmark | `{' '.join(argv_[1:])}` (pid {process.pid}"
            f"{', pinned to CPU ' + str(cpus[0]) if pin else ''}), RSS at start {rss:.1f} MiB\n"
            f"{args.decisions:,} decisions to {args.users:,} people over {args.days:g} simulated days "
            f"from {time.strftime('%Y-%m-%d %H:%M', time.gmtime(start_s))} UTC, DecideBatch of "
            f"{args.batch} x {args.in_flight} in flight",
            flush=True,
        )
        points = asyncio.run(drive(args, address, process.pid, workload))
        met = report(args, points)
        if process.poll() is not None:
            print(f"the sidecar exited ({process.returncode}):")
            log.seek(0)
            print(log.read()[-3000:])
            return 1
        return 0 if met else 2
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except Exception:
                process.kill()
                process.wait()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
