"""`smart-dispatch serve` as a separate process, the way operators run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Sidecar:
    process: subprocess.Popen[str]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def spawn(*args: str, env: dict[str, str] | None = None, command: str = "serve") -> subprocess.Popen[str]:
    """Start `smart-dispatch <command> --port 0 ARGS` (a `serve` prints its address first)."""
    extra = ["--port", "0"] if command == "serve" else []
    return subprocess.Popen(
        [sys.executable, "-m", "smart_dispatch", command, *extra, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SD_LOG_LEVEL": "WARNING", **(env or {})},
    )


def address_of(process: subprocess.Popen[str]) -> int:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("smart-dispatch listening on "):
        _, stderr = process.communicate(timeout=10)
        raise RuntimeError(f"sidecar did not start: {line!r}\n{stderr[-3000:]}")
    return int(line.rsplit(":", 1)[1])


@contextmanager
def sidecar(*args: str, env: dict[str, str] | None = None) -> Iterator[Sidecar]:
    """A running sidecar; stopped with SIGTERM (SIGKILL if it hangs) on exit."""
    process = spawn(*args, env=env)
    try:
        yield Sidecar(process, address_of(process))
    finally:
        stop(process)


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM (SIGKILL if it hangs), then reap it and close its pipes."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
