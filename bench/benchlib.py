"""Helpers shared by the benchmarks (run them as scripts: `python bench/<name>.py`)."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent

#: glibc malloc thresholds pinned as in the Makefile (durable-rules' throughput is bimodal without).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "268435456"}


def batch_body(payloads: list[bytes]) -> bytes:
    """A DecideBatchRequest / DispatchBatchRequest of pre-serialized requests: each one is the
    repeated field 1, length-delimited, so the batch is their framed concatenation."""
    out = bytearray()
    for payload in payloads:
        out += b"\x0a" + _varint(len(payload)) + payload
    return bytes(out)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def machine_busy_s() -> float:
    """CPU seconds since boot spent in user processes, or stolen by the hypervisor, on the whole
    machine (Linux /proc). Left out: interrupts and kernel threads (kworkers, ksoftirqd), whose
    work under load is mostly our own loopback traffic."""
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    kernel_threads = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if fields[1] == "2" or entry.name == "2":  # kthreadd and its children
            kernel_threads += int(fields[11]) + int(fields[12])
    return (user + nice + system + steal - kernel_threads) / os.sysconf("SC_CLK_TCK")


def forget_keys(store_url: str, prefix: str) -> None:
    """Delete this run's keys from a single Redis server (they expire anyway, by cap window)."""
    if not store_url.startswith(("redis://", "rediss://")):
        return
    import redis

    try:
        with redis.Redis.from_url(store_url, socket_timeout=5) as client:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.unlink(*keys[start : start + 1000])
    except redis.RedisError as exc:
        print(f"could not delete this run's keys ({prefix}:*): {exc}")


def launch(
    argv: list[str], env: dict[str, str], cpus: set[int] | None
) -> tuple[subprocess.Popen[str], IO[str]]:
    """Start `argv` from the repository root, stdout piped, stderr to a temp file (returned; the
    caller closes it); pinned to `cpus` (every thread) and SIGTERMed if the benchmark dies."""
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - owned by the caller
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=functools.partial(_in_child, cpus),
    )
    return process, log


def _in_child(cpus: set[int] | None) -> None:
    """Between fork and exec: SIGTERM when the benchmark dies, so no child outlives it; pin
    every thread of the child to `cpus`."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
