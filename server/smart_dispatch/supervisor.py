"""`serve --workers N`: N sidecar processes sharing one port (SO_REUSEPORT, on by default in
gRPC on Linux), so decisions use every core. The kernel spreads new connections across them.

The parent starts the children, prints one `listening` line once every child is serving,
forwards SIGTERM / SIGINT (graceful stop) and SIGHUP (rules reload) to all of them, and restarts
a child that dies on its own. Every child reloads rules itself (its own watcher). Caps, lists and
dispatches must live in a shared store: `--workers` above 1 needs `--store redis://…`.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from smart_dispatch.errors import ConfigurationError

log = logging.getLogger(__name__)
_START_TIMEOUT_S = 30.0


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Supervisor:
    def __init__(self, child_args: Sequence[str], workers: int, host: str, port: int, store_url: str) -> None:
        if workers > 1 and not store_url.startswith(("redis://", "rediss://", "redis+cluster://")):
            raise ConfigurationError(
                f"--workers {workers} needs a shared store (--store redis://…): {store_url} is per process"
            )
        self._args = list(child_args)
        self._workers = workers
        self._host = host
        self._port = port or free_port(host)
        self._children: list[subprocess.Popen[str]] = []
        self._stopping = False
        self._metrics_port = 0

    def _spawn(self, index: int) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "smart_dispatch", "serve", *self._args, "--port", str(self._port)]
        env = {**os.environ, "SD_WORKERS": "1"}
        if self._metrics_port:  # one /metrics port per process: base, base + 1, …
            env["SD_METRICS_PORT"] = str(self._metrics_port + index)
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)

    def _await_listening(self, child: subprocess.Popen[str]) -> None:
        """Wait for the child's `listening` line; a signal to stop ends the wait early."""
        assert child.stdout is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([child.stdout], [], [], min(left, 0.1))
            if ready:
                line = child.stdout.readline()
                if line.startswith("smart-dispatch listening on "):
                    return
                break
        if self._stopping:
            return
        child.kill()
        child.wait()
        raise ConfigurationError(f"a worker process did not start (exit {child.returncode})")

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    def run(self, metrics_port: int = 0) -> int:
        """Serve until SIGTERM / SIGINT; returns the exit status. A signal during start-up
        stops the children started so far (each stops its own start-up) and returns."""
        self._metrics_port = metrics_port
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._forward)
        try:
            for index in range(self._workers):
                if self._stopping:
                    break
                self._children.append(self._spawn(index))
            for child in self._children:
                self._await_listening(child)
        except BaseException:
            self._forward(signal.SIGTERM, None)
            raise
        if self._stopping:
            self._forward(signal.SIGTERM, None)  # children spawned while the signal came in
        else:
            log.info("%d sidecar processes share %s:%d", self._workers, self._host, self._port)
            print(f"smart-dispatch listening on {self._host}:{self._port}", flush=True)
        while True:
            for index, child in enumerate(self._children):
                if child.poll() is not None and not self._stopping:
                    log.error("worker %d exited with %s; restarting it", child.pid, child.returncode)
                    self._children[index] = self._spawn(index)
                    self._await_listening(self._children[index])
            if self._stopping and all(child.poll() is not None for child in self._children):
                return 0
            time.sleep(0.1)
