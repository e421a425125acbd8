"""Private `redis-server` processes for tests: one server, or a 3-master Redis Cluster.

Each server runs on a free 127.0.0.1 port with its own temporary directory, no persistence, and
is stopped (SIGTERM, then SIGKILL) and its directory removed by `close()`. A server can be
stopped and started again on the SAME port to simulate an outage.

    with RedisServer.start_new() as server:      # or RedisCluster.start_new()
        url = server.url
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
MISSING_REASON = "redis-server / redis-cli not found on PATH (apt-get install redis-server)"
START_TIMEOUT_S = 10.0


def available() -> bool:
    return REDIS_SERVER is not None and REDIS_CLI is not None


def require_redis() -> None:
    """Skip locally, FAIL under CI=true, when the redis binaries are missing."""
    if available():
        return
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {MISSING_REASON}")
    pytest.skip(MISSING_REASON)


CLUSTER_BUS_OFFSET = 10000  # a cluster node also listens on port + 10000, so port <= 55535
CLUSTER_NODE_ARGS = (
    "--cluster-enabled", "yes",
    "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", "5000",
)  # fmt: skip


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, cluster: bool = False) -> int:
    """A TCP port free right now on 127.0.0.1 (a tiny reuse race is accepted). A `cluster` port
    also has its bus port (port + 10000) free, which must stay below 65536."""
    if not cluster:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 45000)
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """One `redis-server` process on `port`, data (none persisted) and log in `directory`."""

    def __init__(self, port: int, directory: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.port = port
        self.directory = directory
        self.extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start_new(cls, extra_args: tuple[str, ...] = (), *, cluster: bool = False) -> RedisServer:
        port = free_port(cluster=cluster)
        server = cls(port, Path(tempfile.mkdtemp(prefix="sd-redis-")), extra_args)
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        return server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client for inspecting the server from tests (close it)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start(self) -> None:
        """Start (again) on the same port; returns once PING answers."""
        assert REDIS_SERVER is not None, MISSING_REASON
        if self._process is not None:
            raise RuntimeError(f"redis-server on port {self.port} already running")
        log = (self.directory / "redis.log").open("ab")
        with log:
            self._process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.directory),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._wait_for_ping()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open but nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the process (the port and directory stay reserved for `start`)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))

    def _wait_for_ping(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{log[-2000:]}")
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.02)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RedisCluster:
    """Three masters, no replicas, all slots assigned; `url` is `redis+cluster://` to one seed."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @classmethod
    def start_new(cls, masters: int = 3) -> RedisCluster:
        nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                nodes.append(RedisServer.start_new(CLUSTER_NODE_ARGS, cluster=True))
            cluster = cls(nodes)
            cluster._create()
        except BaseException:
            for node in nodes:
                node.close()
            raise
        return cluster

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def flushall(self) -> None:
        for node in self.nodes:
            node.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def _create(self) -> None:
        assert REDIS_CLI is not None, MISSING_REASON
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(self._state_ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    @staticmethod
    def _state_ok(node: RedisServer) -> bool:
        with node.client() as client:
            info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
