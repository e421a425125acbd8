"""Decide throughput and latency against a bare grpc.aio echo baseline, in one run.

    .venv/bin/python bench/decide.py [--store memory://] [--compare-store redis://…] [--concurrency 1,32]
                                     [--seconds 3] [--rounds 3] [--clients N] [--no-pin]
                                     [--learning-off]

Two servers, each in its own process (so neither shares a GIL with the load generator):
- the real sidecar, `smart-dispatch serve --port 0 --rules rules --store URL`;
- the baseline: a bare `grpc.aio` server (same interpreter, same grpcio, one event loop, same
  server options) with one generic unary method returning the request bytes unchanged.
Load comes from `--clients` separate processes, each with one grpc.aio channel, sending
pre-serialized bytes (no protobuf work on the client side). Echo and Decide get the SAME client
code and the SAME request stream (same sizes, same bytes), so the only difference is the method.
With 2+ CPUs the servers are pinned to the first CPU and the clients to the others, so the load
generator never competes with the server it measures (the server gets exactly one core).
Decide requests mix 70% marketing (a new user each), 20% otp and 10% transactional (a pool of
users), recipients in several timezones with different `last_active_at`; every message id is
unique, so caps are really reserved and nothing is a duplicate. Not a test: it prints numbers.

`--learning-off` adds a third server in the same run: the same rules without their learned
effects (`choose`, `send_time`, ...: `rules.effects.without_learning`), and prints what learning
costs: Decide with learning / Decide without (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchlib import MALLOC_ENV, forget_keys, launch, machine_busy_s

ROOT = Path(__file__).resolve().parent.parent
DECIDE_METHOD = "/smartdispatch.v1.SmartDispatchService/Decide"
ECHO_SERVICE, ECHO_NAME = "bench.v1.EchoService", "Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/{ECHO_NAME}"
# Same values as the Makefile: durable-rules' throughput is bimodal without them.
# Ids are spliced into pre-serialized requests: fixed lengths keep every length prefix valid.
ID_LEN = 24
MSG_SLOT, USER_SLOT = b"#" * ID_LEN, b"%" * ID_LEN
# last_active_at differs per request (as it does per person), so nothing can be served from a
# memo of an earlier, identical profile: a fixed-width RFC 3339 instant, spliced like the ids.
ACTIVE_SLOT = b"0000-00-00T00:00:00Z"
ACTIVE_SPREAD_S = 86_400  # each request's instant: its template's age plus up to a day
POOL_USERS = 5_000
RUN_TAG = secrets.token_hex(3)  # keeps ids (and Redis keys) of separate runs apart
ECHO_RATIO_TARGET = 0.5  # Decide / the faster of the two bare echoes (aio, sync)
LEARNING_RATIO_TARGET = 0.9  # Decide with learning / the same rules without
REDIS_RATIO_TARGET = 0.8  # Decide on Redis / Decide on the memory store, same run
#: open-loop goals: (share of the measured Decide capacity, latency quantile, bound in ms)
OPEN_LOOP_GOALS = ((0.5, 0.99, 5.0), (0.5, 0.999, 20.0), (0.8, 0.99, 15.0))


# ----------------------------------------------------------------------------- workload


# (before the message id, between message id and user id, between user id and last_active_at
# (the rest when there is none), after last_active_at or None, new user per request, the
# template's last_active_at as epoch seconds)
Template = tuple[bytes, bytes, bytes, bytes | None, bool, float]


def request_templates() -> tuple[list[Template], list[int]]:
    """Serialized DecideRequests split around their id slots, and a weighted cycle over them.

    See `Template`; `cycle` is 100 template indices: 70 marketing, 20 otp, 10 transactional,
    shuffled with a fixed seed."""
    from google.protobuf import struct_pb2
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

    rng = random.Random(20240611)
    zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Shanghai", "Asia/Kolkata"]
    zones += ["America/Los_Angeles", "Australia/Sydney", "America/Sao_Paulo"]
    now = datetime.now(UTC)
    templates: list[Template] = []
    by_category: dict[str, list[int]] = {"marketing": [], "otp": [], "transactional": []}
    for category, count in (("marketing", 24), ("otp", 8), ("transactional", 8)):
        for i in range(count):
            attributes = struct_pb2.Struct()
            last_active = None
            if i % 4 != 3:  # a quarter never seen active: no last_active_at
                days = rng.choice([0.2, 1.5, 2.9, 4.0, 12.0, 40.0])
                last_active = (now - timedelta(days=days)).timestamp()
                attributes.update({"last_active_at": ACTIVE_SLOT.decode()})
            attributes.update({"segment": rng.choice(["free", "pro", "team"]), "vip": i % 5 == 0})
            addresses = {"email": "person@example.com", "sms": "+4915112345678"}
            if category != "otp":
                addresses["in_app"] = "inbox-" + str(i)
            request = pb.DecideRequest(
                message=pb.Message(
                    id=MSG_SLOT.decode(),
                    category=category,
                    template=f"{category}_template_{i % 3}",
                    labels={"campaign": "spring"} if category == "marketing" else {},
                ),
                recipient=pb.Recipient(
                    user_id=USER_SLOT.decode(),
                    timezone=zones[i % len(zones)],
                    locale=rng.choice(["en-US", "de-DE", "zh-CN"]),
                    addresses=addresses,
                    attributes=attributes,
                ),
            )
            raw = request.SerializeToString()
            head, rest = raw.split(MSG_SLOT)
            middle, tail = rest.split(USER_SLOT)
            after: bytes | None = None
            if last_active is not None:
                tail, after = tail.split(ACTIVE_SLOT)
            by_category[category].append(len(templates))
            templates.append((head, middle, tail, after, category == "marketing", last_active or 0.0))
    cycle = [rng.choice(by_category["marketing"]) for _ in range(70)]
    cycle += [rng.choice(by_category["otp"]) for _ in range(20)]
    cycle += [rng.choice(by_category["transactional"]) for _ in range(10)]
    rng.shuffle(cycle)
    return templates, cycle


class RequestStream:
    """Endless unique requests: every message id is new; marketing users are new too."""

    def __init__(self, templates: list[Template], cycle: list[int], tag: str) -> None:
        digits = ID_LEN - 1 - len(tag)  # ids must keep exactly ID_LEN bytes
        if digits < 8:
            raise ValueError(f"tag {tag!r} leaves too few digits in a {ID_LEN}-byte id")
        self._templates, self._cycle = templates, cycle
        self._message, self._user = f"m{tag}{{:0{digits}d}}", f"u{tag}{{:0{digits}d}}"
        self._seq = 0

    def next(self) -> bytes:
        seq = self._seq = self._seq + 1
        head, middle, tail, after, new_user, last_active = self._templates[
            self._cycle[seq % len(self._cycle)]
        ]
        message_id = self._message.format(seq)
        user_id = self._user.format(seq) if new_user else f"p{seq * 7919 % POOL_USERS:0{ID_LEN - 1}d}"
        parts = [head, message_id.encode(), middle, user_id.encode(), tail]
        if after is not None:
            instant = last_active - seq * 104_729 % ACTIVE_SPREAD_S
            parts += [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(instant)).encode(), after]
        return b"".join(parts)


# ----------------------------------------------------------------------------- servers


def serve_echo(kind: str) -> None:
    """A baseline server (run in its own process): bytes in, the same bytes out.

    `aio`: grpc.aio, one event loop (the sidecar's transport). `sync`: grpc.server with a pool of
    SYNC_THREADS threads. `hop`: the sync server, each call handed to an asyncio loop running in
    its own thread and awaited there (a trivial coroutine): the ceiling of a hybrid transport
    whose handlers run on a sync server but whose stores live on an event loop."""
    if kind in ("sync", "hop"):
        serve_sync_echo(kind == "hop")
        return
    import grpc

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # as smart_dispatch.app
        handler = grpc.unary_unary_rpc_method_handler(echo)  # no (de)serializers: raw bytes
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ECHO_SERVICE, {ECHO_NAME: handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"echo listening on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    if kind == "uvloop":
        import uvloop

        uvloop.run(main())
        return
    asyncio.run(main())


SYNC_THREADS = 8


def serve_sync_echo(hop: bool) -> None:
    import threading
    from concurrent import futures

    import grpc

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="loop", daemon=True).start()

    async def answer(request: bytes) -> bytes:
        return request

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def hop_echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return asyncio.run_coroutine_threadsafe(answer(request), loop).result()

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=SYNC_THREADS), options=[("grpc.so_reuseport", 0)]
    )
    handler = grpc.unary_unary_rpc_method_handler(hop_echo if hop else echo)
    generic = grpc.method_handlers_generic_handler(ECHO_SERVICE, {ECHO_NAME: handler})
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"echo listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


@dataclass
class Server:
    name: str
    process: subprocess.Popen[str]
    address: str
    log: Any

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds of (the whole process, its main thread: the event loop)."""
        pid = self.process.pid
        return cpu_s(f"/proc/{pid}/stat"), cpu_s(f"/proc/{pid}/task/{pid}/stat")

    def log_tail(self, chars: int = 3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def start_server(
    name: str, argv: list[str], marker: str, env: dict[str, str], cpus: set[int] | None
) -> Server:
    """Start `argv` (on `cpus` if given, every thread included), wait for the `<marker>
    HOST:PORT` line on stdout; stderr goes to a temp file that `Server.stop` closes."""
    process, log = launch(argv, env, cpus)
    assert process.stdout is not None
    line = process.stdout.readline()
    if marker not in line:
        process.kill()
        process.wait()
        log.seek(0)
        raise SystemExit(f"{name} server did not start ({' '.join(argv)}):\n{line}{log.read()[-3000:]}")
    return Server(name, process, line.split(marker, 1)[1].strip(), log)


def cpu_s(stat_path: str) -> float:
    """User + system CPU seconds from a Linux /proc stat file (a process or one thread)."""
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- load generator


def client_process(conn: Connection, cpus: set[int] | None) -> None:
    """One load-generator process: one event loop, one grpc.aio channel per server address."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    asyncio.run(_client_loop(conn))


async def _client_loop(conn: Connection) -> None:
    import grpc

    channels: dict[str, grpc.aio.Channel] = {}
    while True:
        command = await asyncio.to_thread(conn.recv)
        if command is None:
            break
        address = command["address"]
        if address not in channels:
            channels[address] = grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
            await channels[address].channel_ready()
        call = channels[address].unary_unary(command["method"])  # bytes in, bytes out
        stream = RequestStream(command["templates"], command["cycle"], command["tag"])
        if command.get("rate"):
            result = await _drive_open(call, stream, command["rate"], command["start"], command["end"])
        else:
            result = await _drive(call, stream, command["in_flight"], command["start"], command["end"])
        conn.send(result)
    for channel in channels.values():
        await channel.close()


async def _drive(
    call: Any, stream: RequestStream, in_flight: int, start: float, end: float
) -> dict[str, Any]:
    """`in_flight` closed loops from `start` to `end` (time.monotonic, shared by processes);
    latencies (s) of calls that completed inside the window."""
    import grpc

    latencies: list[float] = []
    errors: Counter[str] = Counter()
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu0 = time.process_time()

    async def loop() -> None:
        clock = time.perf_counter
        while time.monotonic() < end:
            payload = stream.next()
            t0 = clock()
            try:
                await call(payload, timeout=10)
            except grpc.aio.AioRpcError as exc:
                errors[f"{exc.code().name}: {exc.details()}"] += 1
                continue
            t1 = clock()
            if time.monotonic() <= end:
                latencies.append(t1 - t0)

    await asyncio.gather(*(loop() for _ in range(in_flight)))
    return {"latencies": latencies, "errors": dict(errors), "cpu_s": time.process_time() - cpu0}


async def _drive_open(
    call: Any, stream: RequestStream, rate: float, start: float, end: float
) -> dict[str, Any]:
    """Open loop: calls start at Poisson arrival instants (`rate` per second) from `start` to
    `end`, whatever the answers do (no coordinated omission). A call's latency runs from its
    SCHEDULED instant, so a late client counts against the server, never for it; `lag` is how
    late the client actually sent (shows whether the load generator kept up)."""
    import grpc

    latencies: list[float] = []
    lags: list[float] = []
    errors: Counter[str] = Counter()
    clock = time.monotonic
    rng = random.Random()
    pending: set[asyncio.Task[None]] = set()

    async def one(payload: bytes, scheduled: float) -> None:
        try:
            await call(payload, timeout=10)
        except grpc.aio.AioRpcError as exc:
            errors[f"{exc.code().name}: {exc.details()}"] += 1
            return
        latencies.append(clock() - scheduled)

    await asyncio.sleep(max(0.0, start - clock()))
    cpu0 = time.process_time()
    scheduled = start
    while True:
        scheduled += rng.expovariate(rate)
        if scheduled >= end:
            break
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(clock() - scheduled)
        task = asyncio.create_task(one(stream.next(), scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    return {"latencies": latencies, "errors": dict(errors), "cpu_s": time.process_time() - cpu0, "lags": lags}


class LoadGenerator:
    def __init__(
        self, clients: int, templates: list[Template], cycle: list[int], cpus: set[int] | None
    ) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that may hold gRPC state
        self._templates, self._cycle = templates, cycle
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for _ in range(clients):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_process, args=(child, cpus), daemon=True)
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)
        self._runs = 0

    def run(
        self, address: str, method: str, in_flight: int, seconds: float, rate: float = 0.0
    ) -> dict[str, Any]:
        """Split `in_flight` over the client processes (closed loops); or, with `rate` > 0, send
        `rate` requests per second in all on an open-loop Poisson schedule (split evenly). All
        processes start and stop together."""
        active = self._conns[: min(len(self._conns), in_flight)] if not rate else self._conns
        shares = [in_flight // len(active) + (i < in_flight % len(active)) for i in range(len(active))]
        start = time.monotonic() + 0.5  # room for the first run's channel set-up
        self._runs += 1
        for index, (conn, share) in enumerate(zip(active, shares, strict=True)):
            tag = f"{RUN_TAG}{self._runs:04d}{index:02d}"
            conn.send(
                {
                    "address": address,
                    "method": method,
                    "in_flight": share,
                    "start": start,
                    "end": start + seconds,
                    "rate": rate / len(active),
                }
                | {"templates": self._templates, "cycle": self._cycle, "tag": tag}
            )
        results = [conn.recv() for conn in active]
        latencies = [x for r in results for x in r["latencies"]]
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r["errors"])
        lags = sorted(x for r in results for x in r.get("lags", ()))
        return {
            "latencies": latencies,
            "errors": errors,
            "client_cpu_s": sum(r["cpu_s"] for r in results),
            "lag_p99_ms": percentile(lags, 0.99) * 1e3 if lags else 0.0,
        }

    def close(self) -> None:
        for conn in self._conns:
            conn.send(None)
        for proc in self._procs:
            proc.join(timeout=5)


# ----------------------------------------------------------------------------- measurement


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    server_us: float  # server CPU (all threads) per completed request
    loop_busy: float  # server main thread (the event loop) CPU / wall clock; 1.0 = saturated
    server_busy: float  # server CPU, all threads / wall clock (1.0 = one core)
    client_busy: float  # load generators' CPU / wall clock, all processes together
    other_busy: float  # CPU used by everything else on the machine (other processes, steal)
    errors: int


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measure(load: LoadGenerator, server: Server, method: str, in_flight: int, seconds: float) -> Sample:
    (all0, loop0), machine0, wall0 = server.cpu_s(), machine_busy_s(), time.monotonic()
    result = load.run(server.address, method, in_flight, seconds)
    (all1, loop1), machine1, wall1 = server.cpu_s(), machine_busy_s(), time.monotonic()
    other = (machine1 - machine0) - (all1 - all0) - result["client_cpu_s"]
    lat = sorted(result["latencies"])
    done = len(lat)
    for error, count in result["errors"].most_common(3):
        print(f"    ! {server.name}: {count} x {error}")
    return Sample(
        rps=done / seconds,
        p50_ms=percentile(lat, 0.50) * 1e3,
        p99_ms=percentile(lat, 0.99) * 1e3,
        server_us=(all1 - all0) / done * 1e6 if done else float("nan"),
        loop_busy=(loop1 - loop0) / seconds,
        server_busy=(all1 - all0) / seconds,
        client_busy=result["client_cpu_s"] / seconds,
        other_busy=max(0.0, other / (wall1 - wall0)),
        errors=sum(result["errors"].values()),
    )


def median_sample(samples: list[Sample]) -> Sample:
    def med(name: str) -> float:
        return statistics.median(getattr(s, name) for s in samples)

    names = ("rps", "p50_ms", "p99_ms", "server_us", "loop_busy", "server_busy", "client_busy", "other_busy")
    return Sample(*(med(n) for n in names), errors=sum(s.errors for s in samples))


def workload_check(address: str, templates: list[Template], cycle: list[int], count: int = 400) -> str:
    """Send `count` requests of the benchmark stream and summarize the verdicts: shows the mix
    is realistic (not all deferred, no errors). Uses its own message ids."""
    import grpc
    from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

    stream = RequestStream(templates, cycle, f"{RUN_TAG}check")
    verdicts: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    sizes: list[int] = []
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        decide = channel.unary_unary(DECIDE_METHOD, response_deserializer=pb.DecideResponse.FromString)
        for _ in range(count):
            payload = stream.next()
            sizes.append(len(payload))
            response = decide(payload, timeout=10)
            verdicts[pb.Verdict.Name(response.verdict).removeprefix("VERDICT_")] += 1
            if response.steps:
                channels[response.steps[0].channel] += 1
            reasons.update({r.code for r in response.reasons} - {"channel_selected", "rule_matched"})
    share = ", ".join(f"{v} {n / count:.0%}" for v, n in verdicts.most_common())
    first = ", ".join(f"{c} {n / count:.0%}" for c, n in channels.most_common())
    why = ", ".join(f"{r} {n / count:.0%}" for r, n in reasons.most_common(4))
    return (
        f"workload check ({count} Decide calls): {share}; first channel: {first}; "
        f"other reasons: {why or 'none'}; request size {min(sizes)}-{max(sizes)} B "
        f"(mean {statistics.fmean(sizes):.0f})"
    )


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--store", default="memory://", help="store URL passed to the server (default memory://)")
    add("--rules", type=Path, default=ROOT / "rules", help="rules directory (default rules/)")
    add("--concurrency", default="1,32", help="calls in flight, comma-separated (default 1,32)")
    add("--seconds", type=float, default=3.0, help="length of one measurement (default 3)")
    add("--rounds", type=int, default=3, help="measurements per point; medians reported (default 3)")
    add("--warmup", type=float, default=2.0, help="warm-up seconds per server (default 2)")
    add("--clients", type=int, default=0, help="load-generator processes (default: CPUs - 1, at most 4)")
    add("--no-pin", dest="pin", action="store_false", help="do not pin servers to CPU 0, clients to the rest")
    add(
        "--workers",
        default="",
        help="scaling mode: comma-separated sidecar process counts (e.g. 1,2) for `serve --workers N`; "
        "needs --store redis://…; measures Decide alone at each count, no pinning",
    )
    add(
        "--learning-off",
        action="store_true",
        help="also measure the same rules without learned effects, and print the ratio",
    )
    add(
        "--compare-store",
        default="",
        help="also measure a second sidecar on this store URL (e.g. redis://127.0.0.1:6379/5), "
        "interleaved, and print Decide on it / Decide on --store (goal >= 0.8)",
    )
    add(
        "--open",
        default="0.5,0.8",
        help="open-loop points as shares of the measured Decide capacity (default 0.5,0.8; '' skips)",
    )
    add("--open-seconds", type=float, default=8.0, help="length of one open-loop measurement (default 8)")
    add(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:ENV=VALUE[,ENV=VALUE]",
        help="also measure the sidecar with these environment variables, interleaved "
        "(e.g. asyncio:SD_EVENT_LOOP=asyncio, nogc:SD_GC_TUNING=false); repeatable",
    )
    add(
        "--transport-probe",
        action="store_true",
        help="also measure Decide served from a sync grpc.server (bench/transport_probe.py): "
        "`sync-hop` (decisions on the runtime's loop thread) and, on memory://, `sync-lock`",
    )
    add(
        "--hop-echo",
        action="store_true",
        help="also measure a sync grpc.server echo whose handler awaits a coroutine on an event loop "
        "thread (the ceiling of a sync-server + asyncio-stores hybrid)",
    )
    add("--uvloop-echo", action="store_true", help="also measure the aio echo on uvloop's event loop")
    add("--echo-server", choices=("aio", "sync", "hop", "uvloop"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.echo_server:
        serve_echo(args.echo_server)
        return 0
    if args.workers:
        return scaling(args)
    import grpc

    levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    cpus = sorted(os.sched_getaffinity(0))
    clients = args.clients or max(1, min(4, len(cpus) - 1))
    pin = args.pin and len(cpus) >= 2
    server_cpus, client_cpus = ({cpus[0]}, set(cpus[1:])) if pin else (None, None)

    env = os.environ | MALLOC_ENV | {"PYTHONUNBUFFERED": "1", "SD_KEY_PREFIX": f"sdbench{RUN_TAG}"}
    executable = Path(sys.executable).with_name("smart-dispatch")
    sidecar = [str(executable)] if executable.exists() else [sys.executable, "-m", "smart_dispatch"]
    sidecar += ["serve", "--host", "127.0.0.1", "--port", "0", "--rules", str(args.rules)]
    sidecar += ["--store", args.store, "--log-level", "WARNING"]
    echo_argv = [sys.executable, str(Path(__file__).resolve()), "--echo-server"]

    templates, cycle = request_templates()
    servers: list[Server] = []
    load: LoadGenerator | None = None
    scratch = tempfile.TemporaryDirectory(prefix="sd-bench-rules-")
    try:
        decide = start_server("Decide", sidecar, "smart-dispatch listening on", env, server_cpus)
        servers.append(decide)
        echoes = [start_server("aio", [*echo_argv, "aio"], "echo listening on", env, server_cpus)]
        servers.append(echoes[0])
        echoes.append(start_server("sync", [*echo_argv, "sync"], "echo listening on", env, server_cpus))
        servers.append(echoes[1])
        if args.hop_echo:
            echoes.append(start_server("hop", [*echo_argv, "hop"], "echo listening on", env, server_cpus))
            servers.append(echoes[-1])
        if args.uvloop_echo:
            echoes.append(
                start_server("uvloop", [*echo_argv, "uvloop"], "echo listening on", env, server_cpus)
            )
            servers.append(echoes[-1])
        if args.learning_off:
            static_rules = rules_without_learning(args.rules, Path(scratch.name))
            static_argv = [*sidecar[: sidecar.index("--rules") + 1], str(static_rules)]
            static_argv += sidecar[sidecar.index("--rules") + 2 :]
            static_env = env | {"SD_KEY_PREFIX": f"sdbench{RUN_TAG}off"}
            marker = "smart-dispatch listening on"
            servers.append(start_server("static", static_argv, marker, static_env, server_cpus))
        if args.transport_probe:
            probe = [
                sys.executable,
                str(Path(__file__).with_name("transport_probe.py")),
                "--store",
                args.store,
            ]
            probe += ["--rules", str(args.rules)]
            marker = "smart-dispatch listening on"
            servers.append(start_server("sync-hop", [*probe, "--mode", "hop"], marker, env, server_cpus))
            if args.store.startswith("memory:"):
                servers.append(
                    start_server("sync-lock", [*probe, "--mode", "lock"], marker, env, server_cpus)
                )
        for variant in args.variant:
            name, _, assignments = variant.partition(":")
            extra = dict(item.split("=", 1) for item in assignments.split(",") if "=" in item)
            marker = "smart-dispatch listening on"
            servers.append(start_server(name, sidecar, marker, env | extra, server_cpus))
        if args.compare_store:
            other = [*sidecar[: sidecar.index("--store") + 1], args.compare_store]
            other += sidecar[sidecar.index("--store") + 2 :]
            marker = "smart-dispatch listening on"
            servers.append(start_server("Redis", other, marker, env, server_cpus))
        print(
            f"smart-dispatch Decide benchmark | Python {platform.python_version()}, "
            f"grpcio {grpc.__version__}, {len(cpus)} CPUs | store {args.store}"
        )
        shown = " ".join(os.path.relpath(a, ROOT) if a.startswith(str(ROOT)) else a for a in sidecar)
        print(f"Decide:   `{shown}` (pid {decide.process.pid}, malloc thresholds pinned as in the Makefile)")
        print(
            "baselines: bare echo servers, same grpcio, each its own process, same payload, a generic "
            "unary handler returning the request bytes: `aio` = grpc.aio, one event loop (as the "
            f"sidecar); `sync` = grpc.server, {SYNC_THREADS} threads"
            + ("; `hop` = sync, each call awaited on an event-loop thread" if args.hop_echo else "")
        )
        try:
            print(workload_check(decide.address, templates, cycle))
        except grpc.RpcError as exc:
            raise SystemExit(
                f"Decide failed before the benchmark: {exc.code()}: {exc.details()}\n"
                f"server log (tail):\n{decide.log_tail()}"
            ) from exc
        load = LoadGenerator(clients, templates, cycle, client_cpus)
        placement = (
            f"both servers pinned to CPU {cpus[0]}, load generators to CPU(s) {format_cpus(client_cpus)}"
            if pin
            else "no CPU pinning"
        )
        print(
            f"load: {clients} client process(es), each one event loop + one grpc.aio channel, sending "
            "pre-serialized bytes; the same code and request stream for echo and Decide; in-flight "
            f"calls split over the processes; {placement}; only one server is loaded at a time"
        )
        print(
            f"      warm-up {args.warmup:g} s per server, then {args.rounds} x {args.seconds:g} s per point "
            "(echo and Decide interleaved), medians reported"
        )
        rss_start = rss_mib(decide.process.pid)
        decided = 400  # the workload check
        measured = [(echo, ECHO_METHOD) for echo in echoes] + [(decide, DECIDE_METHOD)]
        variants = [v.partition(":")[0] for v in args.variant]
        measured += [(s, DECIDE_METHOD) for s in servers if s.name in SIDECARS[1:] or s.name in variants]
        for server, method in measured:
            warm = len(load.run(server.address, method, max(levels), args.warmup)["latencies"])
            decided += warm if server is decide else 0

        rounds: dict[tuple[str, int], list[Sample]] = {}
        for level in levels:
            for round_ in range(args.rounds):
                for server, method in measured:  # interleaved
                    s = measure(load, server, method, level, args.seconds)
                    rounds.setdefault((server.name, level), []).append(s)
                    decided += round(s.rps * args.seconds) if server is decide else 0
                    print(
                        f"  {server.name:<9} in-flight {level:>3} round {round_ + 1}: {s.rps:6.0f} req/s  "
                        f"p50 {s.p50_ms:6.2f} ms  p99 {s.p99_ms:6.2f} ms  {s.server_us:5.0f} µs server "
                        f"CPU/req  loop {s.loop_busy:4.0%}  clients {s.client_busy:4.0%}  "
                        f"other {s.other_busy:4.0%}"
                    )
        report(rounds, levels, args, clients, pin)
        shares = [float(x) for x in args.open.split(",") if x.strip()]
        if shares:
            sidecars = [server for server, _ in measured if server.name in ("Decide", "Redis")]
            open_loop(load, sidecars, rounds, levels, shares, args)
        print(
            f"Decide server RSS {rss_start:.0f} MiB before the load, {rss_mib(decide.process.pid):.0f} MiB "
            f"after ~{decided} decisions (store {args.store})"
        )
        return 0
    finally:
        if load is not None:
            load.close()
        for server in servers:
            server.stop()
        forget_keys(args.store, env["SD_KEY_PREFIX"])
        scratch.cleanup()


def rules_without_learning(rules: Path, into: Path) -> Path:
    """A copy of the rules directory's files with every learned effect taken out."""
    import yaml
    from smart_dispatch.rules.effects import without_learning

    for path in sorted(rules.glob("*.y*ml")):
        doc = without_learning(yaml.safe_load(path.read_text(encoding="utf-8")))
        (into / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return into


def scaling(args: argparse.Namespace) -> int:
    """Decide throughput with `serve --workers N` for each N, same clients, same run."""
    counts = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    if not args.store.startswith("redis"):
        raise SystemExit("--workers needs a shared store: --store redis://…")
    # One connection per client process: SO_REUSEPORT spreads connections, not calls.
    clients = max(args.clients or 2, max(counts))
    env = os.environ | MALLOC_ENV | {"PYTHONUNBUFFERED": "1", "SD_KEY_PREFIX": f"sdbench{RUN_TAG}"}
    templates, cycle = request_templates()
    load = LoadGenerator(clients, templates, cycle, None)
    results: dict[tuple[int, int], list[Sample]] = {}
    print(
        f"Decide scaling with serve --workers N | store {args.store} | {clients} client processes, no pinning"
    )
    try:
        for count in counts:
            argv = [sys.executable, "-m", "smart_dispatch", "serve", "--host", "127.0.0.1", "--port", "0"]
            argv += ["--rules", str(args.rules), "--store", args.store, "--log-level", "WARNING"]
            argv += ["--workers", str(count)]
            server = start_server(f"{count}w", argv, "smart-dispatch listening on", env, None)
            try:
                load.run(server.address, DECIDE_METHOD, max(levels), args.warmup)
                for level in levels:
                    for _ in range(args.rounds):
                        results.setdefault((count, level), []).append(
                            measure(load, server, DECIDE_METHOD, level, args.seconds)
                        )
            finally:
                server.stop()
    finally:
        load.close()
        forget_keys(args.store, env["SD_KEY_PREFIX"])
    print(f"{'workers':>7} {'in-flight':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'vs 1 worker':>11}")
    for level in levels:
        base = median_sample(results[(counts[0], level)]).rps
        for count in counts:
            s = median_sample(results[(count, level)])
            scale = s.rps / base
            print(f"{count:>7} {level:>9} {s.rps:>8.0f} {s.p50_ms:>7.2f} {s.p99_ms:>7.2f} {scale:>10.2f}x")
    return 0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def limited_by(s: Sample, clients: int, pinned: bool) -> str:
    """What capped this measurement: the server (its event loop, or its one pinned core), the
    load generators (every client process busy), or neither (latency-bound: too few in flight)."""
    if s.loop_busy >= 0.9 or (pinned and s.server_busy >= 0.9):
        return "server"
    if s.client_busy >= 0.9 * clients:
        return "clients"
    return "latency"


def format_cpus(cpus: set[int] | None) -> str:
    return ",".join(str(c) for c in sorted(cpus or ()))


def open_loop(
    load: LoadGenerator,
    sidecars: list[Server],
    closed: dict[tuple[str, int], list[Sample]],
    levels: list[int],
    shares: list[float],
    args: argparse.Namespace,
) -> None:
    """Open-loop latency at `shares` of each sidecar's capacity (its best closed-loop median)."""
    print()
    print(
        f"open loop: Poisson arrivals at a share of each sidecar's capacity (its best closed-loop "
        f"median), {args.rounds} x {args.open_seconds:g} s per point, latency from the scheduled "
        "send instant (no coordinated omission); medians of rounds"
    )
    header = (
        f"{'server':<10}{'share':>6}{'target/s':>9}{'done/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'p99.9 ms':>9}{'max ms':>8}{'lag p99':>8}{'errors':>7}"
    )
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, float], dict[str, float]] = {}
    for share in shares:
        taken: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for server in sidecars:  # interleaved
                capacity = max(median_sample(closed[(server.name, level)]).rps for level in levels)
                rate = share * capacity
                result = load.run(server.address, DECIDE_METHOD, 1, args.open_seconds, rate=rate)
                lat = sorted(result["latencies"])
                taken.setdefault(server.name, []).append(
                    {
                        "rate": rate,
                        "done": len(lat) / args.open_seconds,
                        "p50": percentile(lat, 0.5) * 1e3,
                        "p99": percentile(lat, 0.99) * 1e3,
                        "p999": percentile(lat, 0.999) * 1e3,
                        "max": (lat[-1] if lat else float("nan")) * 1e3,
                        "lag": result["lag_p99_ms"],
                        "errors": sum(result["errors"].values()),
                    }
                )
        for server in sidecars:
            runs = taken[server.name]
            m = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            m["errors"] = sum(r["errors"] for r in runs)
            results[(server.name, share)] = m
            print(
                f"{server.name:<10}{share:>6.0%}{m['rate']:>9.0f}{m['done']:>8.0f}{m['p50']:>8.2f}"
                f"{m['p99']:>8.2f}{m['p999']:>9.2f}{m['max']:>8.1f}{m['lag']:>8.2f}{m['errors']:>7.0f}"
            )
    print("-" * len(header))
    print("open-loop goals:")
    for server in sidecars:
        for share, quantile, bound in OPEN_LOOP_GOALS:
            if (server.name, share) not in results:
                continue
            m = results[(server.name, share)]
            value = m["p99" if quantile == 0.99 else "p999"]
            ok = value <= bound and m["errors"] == 0
            print(
                f"  {server.name} at {share:.0%}: p{quantile * 100:g} <= {bound:g} ms: {value:.2f} ms  "
                f"{'MET' if ok else 'NOT MET'}"
            )


ECHOES = ("aio", "sync", "hop", "uvloop")
SIDECARS = ("Decide", "Redis", "static", "sync-hop", "sync-lock")


def report(
    rounds: dict[tuple[str, int], list[Sample]],
    levels: list[int],
    args: argparse.Namespace,
    clients: int,
    pinned: bool,
) -> None:
    results = {key: median_sample(taken) for key, taken in rounds.items()}
    print()
    print(
        f"medians of {args.rounds} x {args.seconds:g} s | store {args.store} | {clients} client process(es)"
    )
    columns = (
        ("server", 10), ("in-flight", 8), ("req/s", 8), ("p50 ms", 8), ("p99 ms", 8),
        ("CPU µs/req", 11), ("loop busy", 10), ("srv busy", 9), ("cli busy", 9), ("errors", 7),
    )  # fmt: skip
    header = (
        "".join(
            f"{name:<{width}}" if i == 0 else f"{name:>{width}}" for i, (name, width) in enumerate(columns)
        )
        + "  limited by"
    )
    print(header)
    print("-" * len(header))
    variants = [v.partition(":")[0] for v in args.variant]
    names = [name for name in (*ECHOES, *SIDECARS, *variants) if (name, levels[0]) in results]
    for level in levels:
        for name in names:
            s = results[(name, level)]
            print(
                f"{name:<10}{level:>8}{s.rps:>8.0f}{s.p50_ms:>8.2f}{s.p99_ms:>8.2f}{s.server_us:>11.0f}"
                f"{s.loop_busy:>10.0%}{s.server_busy:>9.0%}{s.client_busy:>9.0%}{s.errors:>7}"
                f"  {limited_by(s, clients, pinned)}"
            )
    print("-" * len(header))
    for level in levels:
        fastest = max(("aio", "sync"), key=lambda name: results[(name, level)].rps)
        for against in dict.fromkeys((fastest, "aio")):
            echo, decide = results[(against, level)], results[("Decide", level)]
            per_round = [
                d.rps / e.rps
                for e, d in zip(rounds[(against, level)], rounds[("Decide", level)], strict=True)
            ]
            print(
                f"in-flight {level:>3}: Decide/{against} echo throughput {decide.rps / echo.rps:.2f} "
                f"(rounds {min(per_round):.2f}-{max(per_round):.2f}); server CPU per request "
                f"{decide.server_us / echo.server_us:.2f}x (the decision adds "
                f"{decide.server_us - echo.server_us:.0f} µs)"
            )
        pairs = [("Redis", "Decide", "Redis/memory", REDIS_RATIO_TARGET)]
        pairs += [("Decide", "static", "learning on/off", LEARNING_RATIO_TARGET)]
        pairs += [(name, "Decide", f"{name}/aio", 1.0) for name in ("sync-hop", "sync-lock")]
        pairs += [(name, "Decide", f"{name}/default", 1.0) for name in variants]
        for top, bottom, label, goal in pairs:
            if (top, level) in results and (bottom, level) in results:
                on, off = results[(top, level)], results[(bottom, level)]
                per_round = [
                    a.rps / b.rps for a, b in zip(rounds[(top, level)], rounds[(bottom, level)], strict=True)
                ]
                print(
                    f"in-flight {level:>3}: {label} Decide throughput {on.rps / off.rps:.2f} "
                    f"(rounds {min(per_round):.2f}-{max(per_round):.2f}; goal >= {goal}); "
                    f"{on.server_us - off.server_us:+.0f} µs server CPU per decision"
                )

    at = max(levels)
    fastest = max(("aio", "sync"), key=lambda name: results[(name, at)].rps)
    ratio = results[("Decide", at)].rps / results[(fastest, at)].rps
    errors = sum(s.errors for s in results.values())
    print(f"goals at {at} in flight:")
    ok = ratio >= ECHO_RATIO_TARGET and errors == 0
    gap = "" if ratio >= ECHO_RATIO_TARGET else f" (Decide needs {ECHO_RATIO_TARGET / ratio - 1:.0%} more)"
    print(
        f"  Decide/{fastest} echo (the faster echo) >= {ECHO_RATIO_TARGET}: {ratio:.2f}  "
        f"{'MET' if ok else 'NOT MET'}{gap}"
    )
    if ("Redis", at) in results:
        redis_ratio = results[("Redis", at)].rps / results[("Decide", at)].rps
        ok = redis_ratio >= REDIS_RATIO_TARGET and errors == 0
        print(
            f"  Decide on {args.compare_store} / on {args.store} >= {REDIS_RATIO_TARGET}: "
            f"{redis_ratio:.2f}  {'MET' if ok else 'NOT MET'}"
        )
    if errors:
        print(f"  {errors} calls failed: no goal counts as met while calls fail")
    busiest = max(max(s.other_busy for s in taken) for taken in rounds.values())
    if busiest >= 0.1:
        print(
            f"  warning: other processes (or the hypervisor) used up to {busiest:.0%} of a CPU during "
            "the rounds; the numbers are disturbed - run again on a quiet machine"
        )


if __name__ == "__main__":
    sys.exit(main())
