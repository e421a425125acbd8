"""Dispatch end to end: accepted by the real sidecar, delivered by its senders to a webhook sink.

    .venv/bin/python bench/dispatch.py [--messages 10000] [--concurrency 64] [--senders 8]
                                       [--store memory://|redis|redis://...] [--rounds 3]
                                       [--sink inline|process] [--no-pin] [--profile DIR]
    .venv/bin/python bench/dispatch.py --backlog 50000 [--otps 200] [--sink-delay-ms 20] [--store …]

`--backlog N` measures the lanes instead (dispatch/lanes.py): one sidecar whose webhook sink
answers after `--sink-delay-ms`, so marketing piles up. First `--otps` login codes are dispatched
on the idle sidecar, one every 20 ms (the baseline: their time to delivery with nothing queued);
then N marketing messages are dispatched as fast as the sidecar accepts them, and while they
wait, the same number of login codes again. It prints the login codes' time to delivery (p50,
p99) with and without the backlog, how much of the backlog was still waiting when the last code
arrived, and the goal: p99 <= 250 ms behind 50,000 marketing messages.

Processes:
- the sidecar, `python -m smart_dispatch serve --port 0 --rules <tmp> --providers <tmp>
  --senders N --store URL` (malloc thresholds pinned as in the Makefile); its rules send the
  category `event` by webhook, and its providers file points `webhook` at the sink;
- the webhook sink, an aiohttp low-level server on 127.0.0.1 that answers 200 with a tiny JSON
  body at once and records, per Idempotency-Key (`<dispatch id>:<step>`), how often it arrived,
  when (time.monotonic, which is the same clock in every process) and the body's message_id;
  `--sink inline` runs it in the benchmark process (the default), `--sink process` in its own;
- the load: one grpc.aio channel in the benchmark process, `--concurrency` Dispatch calls in
  flight, pre-serialized requests (a new message id and a new user each);
- `--store redis` starts a private redis-server (free port, `--save "" --appendonly no`); a
  redis:// URL uses that server, with this run's own key prefix, deleted at the end;
- the baseline ("provider-only"): `WebhookProvider.send` (channels/webhook.py) called directly
  from a process of its own placed like the sidecar, against the same sink, with as many sends
  in flight as the sidecar has senders (measured in every round; the pipeline/provider-only ratio
  uses it), and once with `--concurrency` in flight for context: the ceiling for a process that
  does nothing but send.
With 2+ CPUs the sidecar and the baseline sender are pinned to the first CPU, everything else
(benchmark process, sink, redis-server) to the others, so the load generator and the sink never
take CPU from the process being measured (`--no-pin` turns this off).

Per round: `--messages` Dispatch calls (after a warm-up of `--warmup` once per sidecar), then
wait until the sink has every message. Measured: accept latency of each Dispatch (p50/p99),
accept rate (accepted / time from the first call to the last answer), end-to-end delivery rate
(messages at the sink / time from the first Dispatch to the last delivery), time to delivery per
message (Dispatch call start to arrival, p50/p99), and that every message arrived exactly once (by
message id and idempotency key; a grace period after the last one catches late duplicates).
Medians over `--rounds`. Not a test: it prints numbers and says whether the target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchlib import MALLOC_ENV, batch_body, forget_keys, launch, machine_busy_s

ROOT = Path(__file__).resolve().parent.parent
DISPATCH_METHOD = "/smartdispatch.v1.SmartDispatchService/Dispatch"
DISPATCH_BATCH_METHOD = "/smartdispatch.v1.SmartDispatchService/DispatchBatch"
# Same values as the Makefile: durable-rules' throughput is bimodal without them.
TARGET_PER_S = 2000.0
RULES = "categories: [event]\nrules:\n  - {name: hook, when: {category: event}, then: {prefer: [webhook]}}\n"
SECRET_ENV, SECRET = "SD_BENCH_HOOK_SECRET", "bench-secret"
PROVIDERS = f"webhook: {{type: webhook, secret_env: {SECRET_ENV}, timeout_s: 5}}\n"
DATA = {"order": "o-1234", "amount": "12.50", "note": "benchmark"}  # the webhook payload's `data`
REPLY = b'{"id":"ok"}'
CHILD_ENV = dict(os.environ)  # before main() turns off gRPC's fork handlers in this process
RUN_TAG = secrets.token_hex(3)  # keeps message ids (and Redis keys) of separate runs apart
GRACE_S = 1.0  # after the last expected delivery: time for late duplicates to show up


# ----------------------------------------------------------------------------- the sink


Arrival = tuple[int, float, float, str]  # count, first and last arrival (monotonic), message_id


class Sink:
    """The webhook receiver: 200 at once (or after `delay_s`); per Idempotency-Key the number of
    arrivals, the first and last arrival time and the first body (parsed only when a snapshot is
    taken)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.arrivals: dict[str, list[Any]] = {}
        self.total = 0
        self.url = ""
        self._runner: Any = None
        self._response: Any = None

    async def start(self) -> str:
        from aiohttp import web

        self._response = web.Response
        server = web.Server(self._handle, access_log=None)  # low level: no router, no middlewares
        self._runner = web.ServerRunner(server, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self.url

    async def _handle(self, request: Any) -> Any:
        body = await request.read()
        now = time.monotonic()
        key = request.headers.get("Idempotency-Key", "")
        entry = self.arrivals.get(key)
        if entry is None:
            self.arrivals[key] = [1, now, now, body]
        else:
            entry[0] += 1
            entry[2] = now
        self.total += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self._response(body=REPLY, content_type="application/json")

    def reset(self) -> None:
        self.arrivals = {}
        self.total = 0

    def snapshot(self) -> dict[str, Arrival]:
        return {key: (e[0], e[1], e[2], _message_id(e[3])) for key, e in self.arrivals.items()}

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _message_id(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message_id", ""))
    except (ValueError, AttributeError):
        return "<not a JSON object>"


class InlineSink:
    """The sink in the benchmark process (same event loop as the gRPC client)."""

    where = "inline"

    def __init__(self) -> None:
        self._sink = Sink()
        self.url = ""
        self.pid = os.getpid()

    async def start(self) -> None:
        self.url = await self._sink.start()

    async def reset(self) -> None:
        self._sink.reset()

    async def count(self) -> int:
        return len(self._sink.arrivals)

    async def snapshot(self) -> dict[str, Arrival]:
        return self._sink.snapshot()

    async def close(self) -> None:
        await self._sink.stop()


class ProcessSink:
    """The sink in a process of its own, driven through a pipe."""

    where = "process"

    def __init__(self, cpus: set[int] | None) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that holds gRPC state
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=sink_process, args=(child, cpus), daemon=True)
        self.url = ""
        self.pid = 0

    async def start(self) -> None:
        self._proc.start()
        self.pid = self._proc.pid or 0
        self.url = await self._ask("url")

    async def _ask(self, *command: Any) -> Any:
        def roundtrip() -> Any:
            self._conn.send(command)
            return self._conn.recv()

        return await asyncio.to_thread(roundtrip)

    async def reset(self) -> None:
        await self._ask("reset")

    async def count(self) -> int:
        return int(await self._ask("count"))

    async def snapshot(self) -> dict[str, Arrival]:
        return dict(await self._ask("snapshot"))

    async def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            await self._ask("stop")
        self._proc.join(timeout=5)


def sink_process(conn: Connection, cpus: set[int] | None) -> None:
    _pin(cpus)
    asyncio.run(_sink_loop(conn))


async def _sink_loop(conn: Connection) -> None:
    sink = Sink()
    await sink.start()
    while True:
        command = await asyncio.to_thread(conn.recv)
        match command[0]:
            case "url":
                conn.send(sink.url)
            case "reset":
                sink.reset()
                conn.send(None)
            case "count":
                conn.send(len(sink.arrivals))
            case "snapshot":
                conn.send(sink.snapshot())
            case _:
                await sink.stop()
                conn.send(None)
                return


async def wait_for_deliveries(sink: InlineSink | ProcessSink, expected: int, timeout_s: float) -> int:
    """Poll the sink until `expected` distinct idempotency keys arrived (or the timeout). Arrival
    times are taken by the sink itself, so the polling interval enters no measurement."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = await sink.count()
        if count >= expected or time.monotonic() >= deadline:
            return count
        await asyncio.sleep(0.01)


# ----------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A subprocess we started, with its stderr in a temporary file."""

    name: str
    process: subprocess.Popen[str]
    log: Any

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return str(self.log.read())[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()


def spawn(name: str, argv: list[str], env: dict[str, str], cpus: set[int] | None) -> Proc:
    process, log = launch(argv, env, cpus)
    return Proc(name, process, log)


def _pin(cpus: set[int] | None) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def start_sidecar(
    senders: int, store_url: str, workdir: Path, env: dict[str, str], cpus: set[int] | None
) -> tuple[Proc, str]:
    argv = [sys.executable, "-m", "smart_dispatch", "serve", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--rules", str(workdir / "rules"), "--providers", str(workdir / "providers.yaml")]
    argv += ["--senders", str(senders), "--store", store_url, "--log-level", "WARNING"]
    sidecar = spawn("sidecar", argv, env, cpus)
    assert sidecar.process.stdout is not None
    line = sidecar.process.stdout.readline()
    marker = "smart-dispatch listening on "
    if not line.startswith(marker):
        sidecar.process.kill()
        sidecar.process.wait()
        raise SystemExit(f"the sidecar did not start ({' '.join(argv)}):\n{line}{sidecar.log_tail()}")
    return sidecar, line.removeprefix(marker).strip()


def start_redis(cpus: set[int] | None) -> tuple[Proc, str, Path]:
    """A private redis-server on a free loopback port, persisting nothing."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--store redis needs redis-server on PATH (or pass a redis:// URL)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    directory = Path(tempfile.mkdtemp(prefix="sd-bench-redis-"))
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(directory)]
    server = spawn("redis", argv, CHILD_ENV, cpus)
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as client:
                client.ping()
            break
        except redis.ConnectionError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start:\n{server.log_tail()}") from None
            time.sleep(0.02)
    return server, f"redis://127.0.0.1:{port}/0", directory


def cpu_s(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of a process (all threads) or one of its threads (Linux /proc)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        parts = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- the baseline


class ProviderOnly:
    """A process of its own that calls `WebhookProvider.send` directly, like a sender would."""

    def __init__(self, cpus: set[int] | None) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=provider_process, args=(child, cpus), daemon=True)
        self._proc.start()
        self.pid = self._proc.pid or 0

    async def run(self, url: str, count: int, concurrency: int, tag: str) -> dict[str, Any]:
        def roundtrip() -> dict[str, Any]:
            self._conn.send((url, count, concurrency, tag))
            return dict(self._conn.recv())

        return await asyncio.to_thread(roundtrip)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._proc.join(timeout=5)


def provider_process(conn: Connection, cpus: set[int] | None) -> None:
    _pin(cpus)
    asyncio.run(_provider_loop(conn))


async def _provider_loop(conn: Connection) -> None:
    from smart_dispatch.channels.base import Content, Delivery, ProviderError
    from smart_dispatch.channels.http_common import HttpOptions
    from smart_dispatch.channels.webhook import WebhookConfig, WebhookProvider

    provider = WebhookProvider(WebhookConfig(SECRET), options=HttpOptions(timeout_s=5.0))
    while (command := await asyncio.to_thread(conn.recv)) is not None:
        url, count, concurrency, tag = command
        deliveries = [
            Delivery(
                f"{tag}d{i:06d}",
                f"{tag}m{i:06d}",
                f"{tag}u{i:06d}",
                "webhook",
                url,
                Content(text=f"event message {tag}m{i:06d}", fields=DATA),
                f"{tag}d{i:06d}:0",
            )
            for i in range(count)
        ]
        cpu0, start = time.process_time(), time.monotonic()
        errors = await _send_all(provider, deliveries, concurrency, ProviderError)
        conn.send({"start": start, "errors": errors, "cpu_s": time.process_time() - cpu0})
    await provider.close()


async def _send_all(provider: Any, deliveries: list[Any], concurrency: int, failure: type) -> Counter[str]:
    """`provider.send` every delivery, `concurrency` at a time; failures by message."""
    pending = iter(deliveries)
    errors: Counter[str] = Counter()

    async def sender() -> None:
        for delivery in pending:
            try:
                await provider.send(delivery)
            except failure as exc:
                errors[str(exc)[:120]] += 1

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return errors


# ----------------------------------------------------------------------------- the load


def local_noon_zone() -> str:
    """An `Etc/GMT±N` zone whose local hour is about noon now: no quiet hours get in the way."""
    offset = (12 - datetime.now(UTC).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def requests_for(url: str, count: int, tag: str) -> tuple[list[str], list[bytes]]:
    """`count` serialized DispatchRequests, each with a new message id and a new user."""
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

    zone = local_noon_zone()
    ids, payloads = [], []
    for i in range(count):
        message_id = f"m{tag}-{i:06d}"
        message = pb.Message(id=message_id, category="event")
        message.data.update(DATA)
        recipient = pb.Recipient(user_id=f"u{tag}-{i:06d}", timezone=zone, addresses={"webhook": url})
        ids.append(message_id)
        payloads.append(pb.DispatchRequest(message=message, recipient=recipient).SerializeToString())
    return ids, payloads


@dataclass
class Accepted:
    starts: list[float]  # monotonic time each Dispatch call started
    ends: list[float]  # ... and was answered (nan when it failed)
    dispatch_ids: list[str]
    errors: Counter[str]


async def dispatch_all(call: Any, payloads: list[bytes], concurrency: int) -> Accepted:
    """Send every payload, `concurrency` calls in flight (closed loops pulling the next one)."""
    import grpc
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

    n = len(payloads)
    done = Accepted([float("nan")] * n, [float("nan")] * n, [""] * n, Counter())
    pending = iter(range(n))
    queued = pb.DISPATCH_STATE_QUEUED

    async def caller() -> None:
        clock = time.monotonic
        for i in pending:
            done.starts[i] = clock()
            try:
                reply = await call(payloads[i], timeout=30)
            except grpc.aio.AioRpcError as exc:
                done.errors[f"{exc.code().name}: {exc.details()}"[:160]] += 1
                continue
            done.ends[i], done.dispatch_ids[i] = clock(), reply.dispatch_id
            if reply.duplicate or reply.status.state != queued:
                state = pb.DispatchState.Name(reply.status.state)
                done.errors[f"accepted as {state}{' (duplicate)' if reply.duplicate else ''}"] += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done


async def dispatch_batches(call: Any, payloads: list[bytes], size: int, in_flight: int = 2) -> Accepted:
    """Every payload through DispatchBatch, `size` a call, `in_flight` calls at once; each
    message's accept latency is its batch's."""
    import grpc

    n = len(payloads)
    done = Accepted([float("nan")] * n, [float("nan")] * n, [""] * n, Counter())
    chunks = iter(range(0, n, size))

    async def caller() -> None:
        for first in chunks:
            start = time.monotonic()
            try:
                reply = await call(batch_body(payloads[first : first + size]), timeout=120)
            except grpc.aio.AioRpcError as exc:
                done.errors[f"{exc.code().name}: {exc.details()}"[:160]] += min(size, n - first)
                continue
            end = time.monotonic()
            for offset, result in enumerate(reply.results):
                i = first + offset
                done.starts[i], done.ends[i] = start, end
                if result.WhichOneof("result") == "error":
                    done.errors[f"{result.error.code}: {result.error.message}"[:160]] += 1
                else:
                    done.dispatch_ids[i] = result.dispatch.dispatch_id

    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return done


# ----------------------------------------------------------------------------- measurement


@dataclass
class Result:
    accept_p50_ms: float
    accept_p99_ms: float
    accept_per_s: float
    delivered_per_s: float
    ttd_p50_ms: float
    ttd_p99_ms: float
    sidecar_busy: float  # sidecar CPU, all threads / wall clock (1.0 = one core)
    loop_busy: float  # the sidecar's main thread (its event loop) / wall clock
    bench_busy: float  # this process (gRPC client, and the sink when inline)
    sink_busy: float  # the sink process (nan when inline)
    redis_busy: float  # the private redis-server (nan without one)
    other_busy: float  # CPU taken by processes not ours (other work on the machine)
    sidecar_us: float  # sidecar CPU per message, µs
    baseline_per_s: float  # provider-only deliveries/s
    baseline_busy: float  # the provider-only process's CPU / wall clock
    ratio: float  # pipeline / provider-only
    exactly_once: int
    missing: int
    duplicates: int
    delivered_despite_error: int  # its Dispatch call failed, but the message was delivered
    unexpected: int
    errors: int  # Dispatch calls that failed, or were not queued for sending now
    baseline_errors: int  # failed provider-only sends (they do not count against the pipeline)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(v for v in values if v == v)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Setup:
    args: argparse.Namespace
    sink: InlineSink | ProcessSink
    baseline: ProviderOnly
    redis_pid: int | None
    call: Any = None  # the Dispatch method on the current sidecar's channel (raw bytes in)


async def run_pipeline(
    setup: Setup, sidecar: Proc, count: int, tag: str
) -> tuple[Accepted, list[str], dict[str, Arrival], dict[str, float]]:
    """One batch through the sidecar: dispatch `count` messages, wait for them at the sink."""
    args, sink = setup.args, setup.sink
    ids, payloads = requests_for(sink.url, count, tag)
    await sink.reset()
    pids = {"sidecar": sidecar.pid, "sink": sink.pid if sink.where == "process" else 0}
    pids |= {"redis": setup.redis_pid or 0, "baseline": setup.baseline.pid}
    cpu0 = {name: cpu_s(pid) for name, pid in pids.items() if pid}
    loop0, bench0, machine0 = cpu_s(sidecar.pid, sidecar.pid), time.process_time(), machine_busy_s()
    t0 = time.monotonic()
    if args.batch:
        accepted = await dispatch_batches(setup.call, payloads, args.batch)
    else:
        accepted = await dispatch_all(setup.call, payloads, args.concurrency)
    expected = sum(1 for dispatch_id in accepted.dispatch_ids if dispatch_id)
    await wait_for_deliveries(sink, expected, timeout_s=30 + count / 100)
    wall = time.monotonic() - t0
    busy = {name: (cpu_s(pid) - cpu0[name]) / wall for name, pid in pids.items() if pid}
    busy["loop"] = (cpu_s(sidecar.pid, sidecar.pid) - loop0) / wall
    busy["bench"] = (time.process_time() - bench0) / wall
    busy["sidecar_s"] = busy["sidecar"] * wall
    ours = sum(v for k, v in busy.items() if k not in ("loop", "sidecar_s"))
    busy["other"] = max(0.0, (machine_busy_s() - machine0) / wall - ours)
    await asyncio.sleep(GRACE_S)
    return accepted, ids, await sink.snapshot(), busy


async def run_baseline(setup: Setup, count: int, in_flight: int, tag: str) -> tuple[float, float, int]:
    """Provider-only deliveries/s (first send to last arrival at the sink), its CPU share,
    failed sends. A few untimed sends first open the connections (keep-alive expires while the
    pipeline round runs), so the timed part is the steady state."""
    sink = setup.sink
    await setup.baseline.run(sink.url, 2 * in_flight, in_flight, f"{tag}w")
    await sink.reset()
    report = await setup.baseline.run(sink.url, count, in_flight, tag)
    errors = sum(report["errors"].values())
    await wait_for_deliveries(sink, count - errors, timeout_s=30 + count / 100)
    arrivals = await sink.snapshot()
    last = max((a[1] for a in arrivals.values()), default=float("nan"))
    for error, n in report["errors"].most_common(3):
        print(f"    ! provider-only: {n} x {error}")
    wall = last - report["start"]
    return len(arrivals) / wall, report["cpu_s"] / wall, errors


def evaluate(
    accepted: Accepted,
    ids: list[str],
    arrivals: dict[str, Arrival],
    busy: dict[str, float],
    baseline: tuple[float, float, int],
) -> Result:
    t0 = min(s for s in accepted.starts if s == s)
    last_accept = max(e for e in accepted.ends if e == e)
    latencies = [(e - s) * 1e3 for s, e in zip(accepted.starts, accepted.ends, strict=True) if e == e]
    by_message: dict[str, list[tuple[str, Arrival]]] = {}
    for key, arrival in arrivals.items():
        by_message.setdefault(arrival[3], []).append((key, arrival))
    once = missing = duplicates = despite = delivered = 0
    to_delivery: list[float] = []
    last_arrival = t0
    for index, message_id in enumerate(ids):
        got = by_message.pop(message_id, [])
        dispatch_id = accepted.dispatch_ids[index]
        if not got:
            missing += bool(dispatch_id)  # accepted, never arrived
            continue
        total = sum(arrival[0] for _, arrival in got)
        duplicates += total - 1
        if dispatch_id:
            once += total == 1 and got[0][0] == f"{dispatch_id}:0"
        else:
            despite += 1  # its Dispatch failed, yet it was persisted and delivered
        first = min(arrival[1] for _, arrival in got)
        to_delivery.append((first - accepted.starts[index]) * 1e3)
        last_arrival = max(last_arrival, first)
        delivered += 1
    unexpected = sum(arrival[0] for got in by_message.values() for _, arrival in got)
    nan = float("nan")
    return Result(
        accept_p50_ms=percentile(latencies, 0.50),
        accept_p99_ms=percentile(latencies, 0.99),
        accept_per_s=len(latencies) / (last_accept - t0),
        delivered_per_s=delivered / (last_arrival - t0) if delivered else 0.0,
        ttd_p50_ms=percentile(to_delivery, 0.50),
        ttd_p99_ms=percentile(to_delivery, 0.99),
        sidecar_busy=busy["sidecar"],
        loop_busy=busy["loop"],
        bench_busy=busy["bench"],
        sink_busy=busy.get("sink", nan),
        redis_busy=busy.get("redis", nan),
        other_busy=busy["other"],
        sidecar_us=busy["sidecar_s"] / max(1, delivered) * 1e6,
        baseline_per_s=baseline[0],
        baseline_busy=baseline[1],
        ratio=(delivered / (last_arrival - t0)) / baseline[0] if delivered else 0.0,
        exactly_once=once,
        missing=missing,
        duplicates=duplicates,
        delivered_despite_error=despite,
        unexpected=unexpected,
        errors=sum(accepted.errors.values()),
        baseline_errors=baseline[2],
    )


def median_result(results: list[Result]) -> Result:
    values: dict[str, Any] = {}
    for f in fields(Result):
        column = [getattr(r, f.name) for r in results]
        if f.type == "int":
            values[f.name] = sum(column)
        else:
            present = [v for v in column if v == v]
            values[f.name] = statistics.median(present) if present else float("nan")
    return Result(**values)


def pct(value: float) -> str:
    return "  -" if value != value else f"{value:4.0%}"


# ----------------------------------------------------------------------------- profiling


async def profile_round(setup: Setup, sidecar: Proc, directory: Path, senders: int, tag: str) -> None:
    """One more batch (not in the medians) with py-spy sampling the sidecar's GIL holder; prints
    where its CPU goes: by activity, self time by function, inclusive time of our functions."""
    raw = directory / f"sidecar-senders{senders}.txt"
    recorder = start_py_spy(sidecar.pid, raw)
    if recorder is None:
        print("  profile: py-spy not found (.venv/bin/pip install py-spy)")
        return
    await asyncio.sleep(1.0)  # py-spy attaches
    accepted, ids, arrivals, busy = await run_pipeline(setup, sidecar, setup.args.messages, tag)
    stderr = stop_py_spy(recorder)
    result = evaluate(accepted, ids, arrivals, busy, (float("nan"), float("nan"), 0))
    print(
        f"  profiled round (py-spy --gil, 100 Hz; sampling slows the sidecar, not in the medians): "
        f"{result.delivered_per_s:.0f} delivered/s; collapsed stacks in {raw} (flamegraph.pl, speedscope)"
    )
    if not raw.exists():
        print(f"  profile: py-spy wrote nothing: {stderr[-500:]}")
        return
    summarize_profile(raw)


def start_py_spy(pid: int, raw: Path) -> subprocess.Popen[bytes] | None:
    """py-spy recording `pid` into `raw` (collapsed stacks) until SIGINT."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return None
    raw.parent.mkdir(parents=True, exist_ok=True)
    argv = [py_spy, "record", "--pid", str(pid), "--rate", "100", "--gil", "--nolineno"]
    argv += ["--format", "raw", "-o", str(raw)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_py_spy(recorder: subprocess.Popen[bytes]) -> str:
    """SIGINT makes py-spy write its output; returns its stderr."""
    recorder.send_signal(signal.SIGINT)
    _, stderr = recorder.communicate(timeout=60)
    return (stderr or b"").decode(errors="replace")


# What a sample was doing, by the frames on its stack (first match wins).
ACTIVITIES = (
    (
        "HTTP: WebhookProvider.send and aiohttp/multidict/yarl",
        ("WebhookProvider.send", "aiohttp/"),
    ),
    ("Dispatch RPC: interceptor, request/response conversion, decide, store", ("SmartDispatchServicer",)),
    (
        "sender pool other than the HTTP call: claim, get, update, ack, events",
        ("SenderPool", "DispatchStore.claim"),
    ),
    ("redis client outside our frames", ("redis/",)),
)
OUTSIDE = "event loop, gRPC (C code) and the rest outside our frames"


def summarize_profile(raw: Path, top: int = 12) -> None:
    """Shares of py-spy's collapsed stacks: by activity, self time, inclusive time of ours."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    activity: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if frame.startswith("smart_dispatch/") and not frame.startswith(
                ("smart_dispatch/cli", "smart_dispatch/__main__")
            ):
                inclusive[frame] += count
        joined = ";".join(frames)
        activity[next((name for name, marks in ACTIVITIES if any(m in joined for m in marks)), OUTSIDE)] += (
            count
        )
    if not total:
        print("  profile: no samples")
        return
    print(f"  where the sidecar's CPU goes ({total} samples of the thread holding the GIL):")
    for name, count in activity.most_common():
        print(f"    {count / total:6.1%}  {name}")
    print("    self time (the function itself, any code):")
    for frame, count in own.most_common(top):
        print(f"      {count / total:6.1%}  {frame}")
    print("    inclusive time of our functions (with everything they call):")
    for frame, count in inclusive.most_common(top + 8):
        print(f"      {count / total:6.1%}  {frame}")


def _frame(text: str) -> str:
    """`function (path/file.py)` -> `path/file.py:function`, the path from the package on."""
    name, _, where = text.partition(" (")
    where = where.rstrip(")")
    for anchor in ("smart_dispatch/", "site-packages/", "python3.11/", "python3.12/"):
        if anchor in where:
            where = (anchor if anchor == "smart_dispatch/" else "") + where.split(anchor, 1)[1]
            break
    return f"{where}:{name}" if where else name


# ----------------------------------------------------------------------------- main


def http_stack() -> str:
    """The versions under the webhook provider (aiohttp)."""
    from importlib import metadata

    versions = []
    for name in ("aiohttp", "multidict", "yarl"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    return ", ".join(versions)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--messages", type=int, default=10_000, help="messages per round (default 10000)")
    add("--warmup", type=int, default=500, help="warm-up messages per sidecar (default 500)")
    add("--concurrency", type=int, default=64, help="Dispatch calls in flight (default 64)")
    add("--senders", default="8", help="sidecar senders; comma-separated to compare (default 8)")
    add(
        "--store",
        default="memory://",
        help="memory:// (default), redis (a private redis-server) or a redis:// URL",
    )
    add("--rounds", type=int, default=3, help="rounds per setting; medians reported (default 3)")
    add("--sink", choices=("inline", "process"), default="inline", help="where the webhook sink runs")
    add("--no-pin", dest="pin", action="store_false", help="no CPU pinning")
    add(
        "--profile",
        type=Path,
        help="after the rounds, one more round with py-spy on the sidecar; output here",
    )
    add(
        "--batch",
        type=int,
        default=0,
        help="dispatch through DispatchBatch calls of this many (default: single calls)",
    )
    add("--backlog", type=int, default=0, help="lanes mode: marketing messages queued ahead (e.g. 50000)")
    add("--otps", type=int, default=200, help="lanes mode: login codes timed, idle and behind the backlog")
    add("--sink-delay-ms", type=float, default=20.0, help="lanes mode: the sink's answer delay (default 20)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Children are started with fork + exec (to pin them and tie them to our life); gRPC's fork
    # handlers would only log that they skip themselves. Set before grpc is imported.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows up in a log file too
    return asyncio.run(run_lanes(args) if args.backlog else run(args))


LANE_RULES = """categories: [otp, marketing]
rules:
  - {name: codes, when: {category: otp}, then: {prefer: [webhook]}}
  - {name: promo, when: {category: marketing}, then: {prefer: [webhook]}}
"""  # no `lane` effect: otp is critical, marketing normal, by category


async def run_lanes(args: argparse.Namespace) -> int:
    """Login codes' time to delivery on an idle sidecar, then behind `--backlog` marketing
    messages, to a slow sink (see the module docstring)."""
    import grpc
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

    workdir = Path(tempfile.mkdtemp(prefix="sd-bench-lanes-"))
    (workdir / "rules").mkdir()
    (workdir / "rules" / "lanes.yaml").write_text(LANE_RULES)
    (workdir / "providers.yaml").write_text(PROVIDERS)
    env = (
        CHILD_ENV
        | MALLOC_ENV
        | {SECRET_ENV: SECRET, "PYTHONUNBUFFERED": "1", "SD_KEY_PREFIX": f"sdlanes{RUN_TAG}"}
    )
    redis_server: Proc | None = None
    redis_dir: Path | None = None
    store_url = args.store
    if store_url == "redis":
        redis_server, store_url, redis_dir = start_redis(None)
    sink = Sink(delay_s=args.sink_delay_ms / 1000)
    url = await sink.start()
    senders = int(str(args.senders).split(",")[0])
    sidecar, address = start_sidecar(senders, store_url, workdir, env, None)
    zone = local_noon_zone()

    def request(category: str, n: int) -> bytes:
        message = pb.Message(id=f"{category}-{RUN_TAG}-{n:06d}", category=category)
        message.data.update(DATA)
        recipient = pb.Recipient(
            user_id=f"u{RUN_TAG}-{category}-{n}", timezone=zone, addresses={"webhook": url}
        )
        return pb.DispatchRequest(message=message, recipient=recipient).SerializeToString()

    def arrived(message_id: str) -> float | None:
        for entry in sink.arrivals.values():
            if _message_id(entry[3]) == message_id:
                return float(entry[1])
        return None

    async def time_otps(call: Any, tag: int) -> list[float]:
        """`--otps` login codes, one every 20 ms; each one's time to delivery (ms)."""
        started: dict[str, float] = {}
        for i in range(args.otps):
            started[f"otp-{RUN_TAG}-{tag + i:06d}"] = time.monotonic()
            await call(request("otp", tag + i), timeout=30)
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 60
        keys = {_message_id(e[3]): e[1] for e in sink.arrivals.values()}
        while len(keys.keys() & started.keys()) < len(started) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            keys = {_message_id(e[3]): e[1] for e in sink.arrivals.values()}
        return [(keys[m] - t) * 1000 if m in keys else float("inf") for m, t in started.items()]

    try:
        async with grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            call = channel.unary_unary(DISPATCH_METHOD, response_deserializer=pb.DispatchResponse.FromString)
            print(
                f"smart-dispatch lanes benchmark | store {store_url} | sidecar pid {sidecar.pid}, "
                f"{senders} senders | webhook sink answering after {args.sink_delay_ms:g} ms"
            )
            idle = await time_otps(call, 0)
            print(
                f"idle: {args.otps} login codes, time to delivery p50 {percentile(idle, 0.5):.0f} ms, "
                f"p99 {percentile(idle, 0.99):.0f} ms"
            )
            payloads = [request("marketing", n) for n in range(args.backlog)]
            t0 = time.monotonic()
            accepted = await dispatch_all(call, payloads, args.concurrency)
            print(
                f"backlog: {args.backlog} marketing dispatches accepted in {time.monotonic() - t0:.0f} s "
                f"({sum(accepted.errors.values())} errors); {sink.total} delivered so far"
            )
            behind = await time_otps(call, 100_000)
            waiting = args.backlog - sum(
                1 for e in sink.arrivals.values() if _message_id(e[3]).startswith("marketing")
            )
            p99, idle_p99 = percentile(behind, 0.99), percentile(idle, 0.99)
            print(
                f"behind the backlog: {args.otps} login codes, time to delivery p50 "
                f"{percentile(behind, 0.5):.0f} ms, p99 {p99:.0f} ms ({p99 / max(1e-9, idle_p99):.1f}x "
                f"idle); {waiting} marketing messages still waiting when the last code arrived"
            )
            met = p99 <= 250 and waiting > 0
            drained = "" if waiting else " (the backlog drained first: raise --backlog or --sink-delay-ms)"
            verdict = "MET" if met else "NOT MET"
            print(
                f"goal: login code p99 <= 250 ms behind {args.backlog} marketing messages: {verdict}{drained}"
            )
    finally:
        sidecar.stop()
        await sink.stop()
        if redis_server is not None:
            redis_server.stop()
        for directory in (workdir, redis_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
    return 0


async def run(args: argparse.Namespace) -> int:
    import grpc

    levels = [int(s) for s in str(args.senders).split(",") if s.strip()]
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    sidecar_cpus, other_cpus = ({cpus[0]}, set(cpus[1:])) if pin else (None, None)
    _pin(other_cpus)  # this process: the gRPC client (and the inline sink)

    workdir = Path(tempfile.mkdtemp(prefix="sd-bench-dispatch-"))
    (workdir / "rules").mkdir()
    (workdir / "rules" / "event.yaml").write_text(RULES)
    (workdir / "providers.yaml").write_text(PROVIDERS)
    prefix = f"sdbench{RUN_TAG}"
    env = CHILD_ENV | MALLOC_ENV | {SECRET_ENV: SECRET, "PYTHONUNBUFFERED": "1", "SD_KEY_PREFIX": prefix}

    redis_server: Proc | None = None
    redis_dir: Path | None = None
    store_url = args.store
    if store_url == "redis":
        redis_server, store_url, redis_dir = start_redis(other_cpus)
    sink: InlineSink | ProcessSink = InlineSink() if args.sink == "inline" else ProcessSink(other_cpus)
    baseline = ProviderOnly(sidecar_cpus)
    await sink.start()
    summary: dict[int, Result] = {}
    try:
        print(
            f"smart-dispatch Dispatch benchmark | Python {platform.python_version()}, grpcio "
            f"{grpc.__version__}, {len(cpus)} CPUs | store {store_url}"
            f"{f' (private redis-server, pid {redis_server.pid})' if redis_server else ''}"
        )
        others = ",".join(map(str, sorted(other_cpus or ())))
        placement = (
            f"sidecar and provider-only sender pinned to CPU {cpus[0]}; benchmark process, sink"
            f"{' and redis-server' if redis_server else ''} to CPU(s) {others}"
            if pin
            else "no CPU pinning"
        )
        sink_text = (
            "in the benchmark process (same event loop as the gRPC client)"
            if sink.where == "inline"
            else f"in its own process (pid {sink.pid})"
        )
        print(f"webhook sink: aiohttp low-level server {sink_text}, {sink.url}")
        print(
            f"load: one grpc.aio channel, {args.concurrency} Dispatch calls in flight, pre-serialized "
            f"requests, a new message id and user each; {args.messages} messages per round after a "
            f"warm-up of {args.warmup}; {args.rounds} rounds per setting; {placement}"
        )
        print(
            f"baseline (provider-only): WebhookProvider.send called directly in its own process (pid "
            f"{baseline.pid}) placed like the sidecar, same sink, as many in flight as the sidecar has "
            f"senders; measured before every round; {http_stack()}"
        )
        setup = Setup(args, sink, baseline, redis_server.pid if redis_server else None)
        await run_baseline(setup, args.warmup, max(levels), f"bw{RUN_TAG}")  # the baseline's warm-up
        context = min(args.messages, 2000)
        rate, busy, _ = await run_baseline(setup, context, args.concurrency, f"bc{RUN_TAG}")
        print(
            f"provider-only with --concurrency {args.concurrency} in flight ({context} sends, for context): "
            f"{rate:.0f} deliveries/s, provider process {busy:.0%} of a core"
        )
        for senders in levels:
            summary[senders] = await run_setting(setup, senders, store_url, workdir, env, sidecar_cpus)
        report(args, summary, sink, store_url)
        return 0
    finally:
        await sink.close()
        baseline.close()
        if redis_server is not None:
            redis_server.stop()
        elif store_url.startswith(("redis://", "rediss://")):
            forget_keys(store_url, prefix)
        for directory in (workdir, redis_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


async def run_setting(
    setup: Setup, senders: int, store_url: str, workdir: Path, env: dict[str, str], cpus: set[int] | None
) -> Result:
    """Start a sidecar with `senders`, warm it up, run the rounds (each: the baseline, then the
    pipeline), optionally profile; the medians."""
    import grpc
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

    args = setup.args
    if setup.redis_pid is not None:
        flush_redis(store_url)  # our private server: every setting starts empty
    sidecar, address = start_sidecar(senders, store_url, workdir, env, cpus)
    try:
        async with grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            setup.call = (
                channel.unary_unary(
                    DISPATCH_BATCH_METHOD, response_deserializer=pb.DispatchBatchResponse.FromString
                )
                if args.batch
                else channel.unary_unary(
                    DISPATCH_METHOD, response_deserializer=pb.DispatchResponse.FromString
                )
            )
            print(f"\n--senders {senders}: sidecar pid {sidecar.pid} at {address}")
            accepted, ids, arrivals, busy = await run_pipeline(
                setup, sidecar, args.warmup, f"w{senders}{RUN_TAG}"
            )
            warm = evaluate(accepted, ids, arrivals, busy, (float("nan"), float("nan"), 0))
            for error, n in accepted.errors.most_common(3):
                print(f"    ! warm-up: {n} x {error}")
            if accepted.errors or warm.exactly_once != args.warmup:
                raise SystemExit(
                    f"warm-up failed: {warm.exactly_once}/{args.warmup} delivered exactly once, "
                    f"{warm.missing} missing; sidecar log (tail):\n{sidecar.log_tail()}"
                )
            results: list[Result] = []
            for round_ in range(1, args.rounds + 1):
                base = await run_baseline(setup, args.messages, senders, f"b{senders}r{round_}{RUN_TAG}")
                accepted, ids, arrivals, busy = await run_pipeline(
                    setup, sidecar, args.messages, f"s{senders}r{round_}{RUN_TAG}"
                )
                for error, n in accepted.errors.most_common(3):
                    print(f"    ! Dispatch: {n} x {error}")
                r = evaluate(accepted, ids, arrivals, busy, base)
                results.append(r)
                print(
                    f"  round {round_}: delivered {r.delivered_per_s:5.0f}/s (time to delivery p50 "
                    f"{r.ttd_p50_ms:.0f} ms, p99 {r.ttd_p99_ms:.0f} ms), exactly once {r.exactly_once}/"
                    f"{args.messages} | accepted {r.accept_per_s:5.0f}/s (p50 {r.accept_p50_ms:.1f} ms, "
                    f"p99 {r.accept_p99_ms:.1f} ms) | provider-only {r.baseline_per_s:5.0f}/s, "
                    f"ratio {r.ratio:.2f}"
                )
                print(
                    f"           CPU: sidecar {pct(r.sidecar_busy)} (event loop {pct(r.loop_busy)}, "
                    f"{r.sidecar_us:.0f} µs per message), bench {pct(r.bench_busy)}, "
                    f"sink {pct(r.sink_busy)}, redis {pct(r.redis_busy)}, "
                    f"provider-only sender {pct(r.baseline_busy)}, "
                    f"not ours {pct(r.other_busy)}"
                )
                if r.missing or r.duplicates or r.unexpected or r.errors:
                    print(f"    ! {problems(r)}")
            if args.profile is not None:
                await profile_round(setup, sidecar, args.profile, senders, f"p{senders}{RUN_TAG}")
    finally:
        stderr = sidecar.log_tail(1 << 24)
        sidecar.stop()
        if sidecar.process.returncode not in (0, -signal.SIGTERM):
            print(f"  ! sidecar exited with {sidecar.process.returncode}: {stderr[-3000:]}")
        elif stderr.strip():
            print(f"  sidecar log: {log_summary(stderr)}")
    return median_result(results)


def log_summary(text: str, top: int = 3) -> str:
    """How many lines, and the most frequent ones without their timestamps."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kinds = Counter(line.split(" ", 2)[-1] if line[:2].isdigit() else line for line in lines)
    shown = "; ".join(f"{n} x {kind[:160]}" for kind, n in kinds.most_common(top))
    return f"{len(lines)} lines: {shown}"


def report(
    args: argparse.Namespace, summary: dict[int, Result], sink: InlineSink | ProcessSink, store: str
) -> None:
    print()
    print(
        f"medians of {args.rounds} rounds x {args.messages} messages | store {store} | "
        f"{args.concurrency} in flight"
    )
    columns = (
        ("senders", 8), ("accept/s", 9), ("acc p50", 8), ("acc p99", 8), ("deliv/s", 8), ("ttd p50", 8),
        ("ttd p99", 8), ("prov-only/s", 12), ("ratio", 6), ("µs/msg", 7), ("sidecar", 8), ("loop", 6),
        ("bench", 6), ("sink", 5), ("redis", 6), ("other", 6), ("once", 7),
    )  # fmt: skip
    header = "".join(f"{name:>{width}}" for name, width in columns)
    print(header)
    print("-" * len(header))
    total = args.messages * args.rounds
    for senders, r in summary.items():
        print(
            f"{senders:>8}{r.accept_per_s:>9.0f}{r.accept_p50_ms:>8.1f}{r.accept_p99_ms:>8.1f}"
            f"{r.delivered_per_s:>8.0f}{r.ttd_p50_ms:>8.0f}{r.ttd_p99_ms:>8.0f}{r.baseline_per_s:>12.0f}"
            f"{r.ratio:>6.2f}{r.sidecar_us:>7.0f}{pct(r.sidecar_busy):>8}{pct(r.loop_busy):>6}"
            f"{pct(r.bench_busy):>6}{pct(r.sink_busy):>5}{pct(r.redis_busy):>6}{pct(r.other_busy):>6}"
            f"{f'{100 * r.exactly_once / total:.0f}%':>7}"
        )
    print("-" * len(header))
    print("(acc = Dispatch accept latency in ms, ttd = time from Dispatch call to arrival at the sink in ms,")
    print(" CPU columns = share of one core over the round, once = messages delivered exactly once)")
    best_senders, best = max(summary.items(), key=lambda item: item[1].delivered_per_s)
    clean = all(r.exactly_once == total and not (r.errors or r.unexpected) for r in summary.values())
    met = best.delivered_per_s >= TARGET_PER_S and clean
    gap = "" if met else f" - needs {TARGET_PER_S / best.delivered_per_s:.1f}x"
    print(
        f"target >= {TARGET_PER_S:,.0f} deliveries/s end to end on this {os.cpu_count()}-CPU machine: "
        f"best {best.delivered_per_s:.0f}/s (--senders {best_senders}): {'MET' if met else 'NOT MET'}{gap}"
    )
    print(
        f"provider-only {best.baseline_per_s:.0f} deliveries/s; pipeline/provider-only {best.ratio:.2f} "
        f"(the sidecar spends {best.sidecar_us:.0f} µs CPU per message: at most "
        f"{1e6 / best.sidecar_us:.0f}/s on one core)"
    )
    for senders, r in summary.items():
        if r.exactly_once != total or r.errors or r.unexpected:
            print(f"  ! --senders {senders}: {r.exactly_once}/{total} exactly once; {problems(r)}")
        if r.loop_busy >= 0.9:
            limit = "the sidecar's event loop (one core) is saturated"
        elif max(r.bench_busy, r.sink_busy if r.sink_busy == r.sink_busy else 0.0) >= 0.9:
            limit = "the benchmark side (client or sink) is saturated: try --sink process or --no-pin"
        else:
            limit = "no process saturated (latency-bound: more senders or more in flight)"
        print(f"  --senders {senders}: limited by {limit}")
    noisy = max(r.other_busy for r in summary.values())
    if noisy >= 0.1:
        print(
            f"  warning: processes not ours took {noisy:.0%} of a core (median round) while measuring: "
            "the numbers are disturbed; run again on a quiet machine"
        )
    busiest = max(r.bench_busy for r in summary.values())
    if sink.where == "inline":
        verdict = "near a full core: try --sink process" if busiest >= 0.9 else "not the bottleneck"
        print(
            f"  the sink ran in the benchmark process (with the gRPC client); that process used at most "
            f"{busiest:.0%} of a core: {verdict}"
        )
    else:
        print(
            f"  the sink ran in its own process (at most {max(r.sink_busy for r in summary.values()):.0%} "
            f"of a core); the client process used at most {busiest:.0%}"
        )


def problems(r: Result) -> str:
    return (
        f"{r.errors} Dispatch calls failed or not queued, {r.missing} accepted but never "
        f"delivered, {r.duplicates} duplicate deliveries, {r.delivered_despite_error} delivered "
        f"although their Dispatch call failed, {r.unexpected} deliveries of messages not sent now"
    )


def flush_redis(url: str) -> None:
    import redis

    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.flushall()


if __name__ == "__main__":
    sys.exit(main())
