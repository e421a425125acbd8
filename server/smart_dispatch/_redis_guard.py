"""The boundary between redis-py and Smart Dispatch: a time bound and error translation.

Every Redis-backed store wraps each operation in `guarded(timeout_s)` (a block of calls) or
`bounded(awaitable, timeout_s)` (one call, the form for hot paths: no context manager):

- the whole operation (all its round trips, connection pool waits, cluster topology refreshes
  and reconnects) must finish within `timeout_s` seconds (`asyncio.timeout`; the clients have no
  socket timeout of their own, see `stores.redis.redis_client`); a cancelled read makes redis-py
  drop that connection;
- unreachable / overloaded / failing-over Redis -> `StoreUnavailableError` (retryable);
- any other Redis error (a script error, OOM) -> `StoreError` (not retryable);
- the original exception stays attached as `__cause__`.

`DirectSender` is a lean road for a hot command on one server: the exchange `execute_command`
makes, without its per-command overhead (also: a command's constant head packed once, an EVALSHA
that reloads its script when the server lost it).
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from smart_dispatch.errors import ConfigurationError, StoreError, StoreUnavailableError

# Conditions that pass: the server is down, slow, loading, failing over or being resharded.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    TimeoutError,  # asyncio.timeout backstop (builtin)
    OSError,
    redis_errors.ConnectionError,  # includes BusyLoadingError, MaxConnectionsError
    redis_errors.TimeoutError,
    redis_errors.ClusterError,  # includes ClusterDownError, MasterDownError
    redis_errors.RedisClusterException,  # includes SlotNotCoveredError
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,  # writing to a replica that was just demoted
)
#: Exchanges `DirectSender` keeps on the wire at once; more concurrent commands share pipelines.
#: One measured best (bench/decide.py on Redis, 32 in flight: 0.30 of the echo with 1, 0.26 with
#: 4, 0.25 unbounded): Redis runs commands one at a time anyway, and fewer, fuller round trips
#: cost less CPU on both sides.
MAX_INFLIGHT = 1
#: What `guarded` and `bounded` translate.
TRANSLATED: tuple[type[BaseException], ...] = (*UNAVAILABLE, redis_errors.RedisError)

T = TypeVar("T")


@asynccontextmanager
async def guarded(timeout_s: float) -> AsyncIterator[None]:
    """Bound the enclosed Redis calls to `timeout_s` seconds and translate their errors.

    Raises `StoreUnavailableError` when Redis cannot answer in time, `StoreError` for other
    Redis failures.
    """
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TRANSLATED as exc:
        raise translated(exc) from exc


async def bounded(awaitable: Awaitable[T], timeout_s: float) -> T:
    """`awaitable` (one Redis call, e.g. `LuaRunner.run`), bounded and translated as by `guarded`,
    at less cost per call: the form for hot paths (a reserve, a decision's user-state read)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except TRANSLATED as exc:
        raise translated(exc) from exc


def translated(exc: BaseException) -> StoreError:
    """The Smart Dispatch error for a redis-py (or timeout) failure: `StoreUnavailableError` when
    Redis is down, slow, loading or failing over, `StoreError` otherwise (`guarded`, `bounded`)."""
    if isinstance(exc, UNAVAILABLE):
        return StoreUnavailableError(f"redis unavailable: {type(exc).__name__}: {exc}")
    return StoreError(f"redis failed: {type(exc).__name__}: {exc}")


def checked_prefix(prefix: str) -> str:
    """A key prefix; braces would break the `{hash tag}` of every key. Raises ConfigurationError."""
    if "{" in prefix or "}" in prefix:
        raise ConfigurationError(f"store prefix {prefix!r} must not contain braces (hash tags)")
    return prefix


class DirectSender:
    """Sends commands packed here on connections of a one-server client's pool, exactly the
    exchange `Redis.execute_command` makes: a connection from the pool (connected and checked by
    it), redis-py's own `send_packed_command` and `read_response` (socket timeouts, disconnect on
    any error or cancellation, reconnect on the next use, server errors such as NoScriptError
    raised), the connection released whatever happens. Left out is only per-command overhead:
    packing in redis-py, its retry wrapper, response callbacks and observability hooks.

    **Automatic pipelining.** At most `max_inflight` exchanges are on the wire at once. A
    command sent while they are all busy waits in a queue, and the whole queue goes as ONE
    pipeline (one write, the replies read in order on one connection) as soon as an exchange
    ends. One caller alone pays nothing for it (its command goes at once); many concurrent
    callers (a batch, a burst of Decides) share round trips: a batch of n items costs about
    n / queue length round trips per step, not n. A server error answers only its own command
    (e.g. NoScriptError, for `send_script` to reload); a lost connection or a pipeline that
    outlives `timeout_s` fails every command still waiting in it. A caller that gives up
    (cancelled, timed out) leaves its command in the pipeline: like any timed-out write it may
    still be applied. `exchanges` counts round trips, `commands` the commands they carried.

    Build it with `for_client`, which declines (None) where those would do something: a Cluster,
    a single-connection client, retries configured, a custom callback for the command. Errors
    are redis-py's, for `guarded` or `bounded` to bound and translate.
    """

    __slots__ = (
        "_inflight",
        "_queue",
        "_tasks",
        "commands",
        "encoding",
        "encoding_errors",
        "exchanges",
        "max_inflight",
        "pool",
        "timeout_s",
    )

    def __init__(
        self,
        pool: ConnectionPool,
        encoding: str,
        encoding_errors: str,
        timeout_s: float,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        self.pool = pool
        self.encoding = encoding
        self.encoding_errors = encoding_errors
        self.timeout_s = timeout_s
        self.max_inflight = max_inflight
        self.exchanges = 0
        self.commands = 0
        self._queue: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_client(cls, client: Redis | RedisCluster, command: str, timeout_s: float) -> DirectSender | None:
        if isinstance(client, RedisCluster) or client.single_connection_client:
            return None
        retry = client.get_retry()
        if (retry is not None and retry.get_retries() > 0) or command in client.response_callbacks:
            return None
        settings = client.connection_pool.connection_kwargs  # what the pool's encoder is made of
        encoding: str = settings.get("encoding", "utf-8")
        return cls(client.connection_pool, encoding, settings.get("encoding_errors", "strict"), timeout_s)

    def pack(self, *args: str | bytes) -> bytes:
        """`args` in the Redis protocol, as redis-py's `pack_command` makes them (str encoded as
        the client's encoder does)."""
        return self.pack_head(len(args), *args)

    async def send(self, command: bytes) -> Any:
        """Send a packed command and read its reply (redis-py's exceptions pass): at once when an
        exchange is free, else in the next pipeline."""
        if self._inflight < self.max_inflight and not self._queue:
            self._inflight += 1
            self.exchanges += 1
            self.commands += 1
            try:
                connection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
                try:
                    await connection.send_packed_command(command)
                    return await connection.read_response()
                finally:
                    await self.pool.release(connection)
            finally:
                self._inflight -= 1
                self._next()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((command, future))
        return await future

    def _next(self) -> None:
        """Send what queued up as one pipeline, if an exchange is free."""
        if not self._queue or self._inflight >= self.max_inflight:
            return
        batch, self._queue = self._queue, []
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._pipeline(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipeline(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        self.exchanges += 1
        self.commands += len(batch)
        try:
            async with asyncio.timeout(self.timeout_s):
                connection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
                try:
                    await connection.send_packed_command([command for command, _ in batch])
                    for _, future in batch:
                        try:
                            reply = await connection.read_response()
                        except redis_errors.ResponseError as exc:  # this command's own error
                            if not future.done():
                                future.set_exception(exc)
                        else:
                            if not future.done():
                                future.set_result(reply)
                finally:
                    await self.pool.release(connection)
        except BaseException as exc:  # lost connection, timeout: every command not answered yet
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else TimeoutError())
            if not isinstance(exc, Exception):
                raise
        finally:
            self._inflight -= 1
            self._next()

    def pack_head(self, argc: int, *args: str | bytes) -> bytes:
        """The start of a command of `argc` arguments in all: its header and `args`, the first
        ones. Append the others with `pack_tail`: the result equals `pack` of all of them. For a
        hot command whose first arguments never change (pack those once)."""
        return b"*%d\r\n" % argc + self.pack_tail(*args)

    def pack_tail(self, *args: str | bytes) -> bytes:
        """`args` as the Redis protocol's bulk strings, without a header (see `pack_head`)."""
        parts = []
        for arg in args:
            value = arg.encode(self.encoding, self.encoding_errors) if isinstance(arg, str) else arg
            parts.append(b"$%d\r\n%b\r\n" % (len(value), value))
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script shipped as package data, run with EVALSHA by a `LuaRunner`."""

    name: str
    source: str
    sha: str

    @classmethod
    def of(cls, name: str, source: str) -> LuaScript:
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())

    @classmethod
    def load(cls, package: str, name: str) -> LuaScript:
        """A script shipped as package data."""
        return cls.of(name, resources.files(package).joinpath(name).read_text("utf-8"))


Arg = str | bytes | int | float


class LuaRunner:
    """The one way Smart Dispatch runs its Lua scripts on a client: EVALSHA, with a SCRIPT LOAD
    (once for a burst of concurrent misses) and one resend when the server lacks the script
    (first use, a restart, SCRIPT FLUSH).

    On one server the command is packed here and goes through the client's `DirectSender`
    (redis-py's exchange without its per-command overhead, concurrent calls sharing pipelined
    round trips); on a Cluster through `execute_command` (slot routing, redirections), after the
    topology was discovered once. Every store of one client shares one runner (`of`), so their
    concurrent calls share pipelines too.

    `run` raises redis-py's errors, for the caller's `guarded` or `bounded` to bound and
    translate. `round_trips` counts the EVALSHA and SCRIPT LOAD commands sent.
    """

    def __init__(self, client: Redis | RedisCluster, timeout_s: float) -> None:
        self.client = client
        self.direct = DirectSender.for_client(client, "EVALSHA", timeout_s)
        self.round_trips = 0
        self._load_lock = asyncio.Lock()
        self._loads: dict[str, int] = {}  # script name -> SCRIPT LOADs done

    @classmethod
    def of(cls, client: Redis | RedisCluster, timeout_s: float) -> LuaRunner:
        """The client's runner, made on first use (the longest timeout asked for bounds its
        pipelines)."""
        runner = _RUNNERS.get(client)
        if runner is None:
            runner = _RUNNERS[client] = cls(client, timeout_s)
        elif runner.direct is not None and timeout_s > runner.direct.timeout_s:
            runner.direct.timeout_s = timeout_s
        return runner

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        direct = self.direct
        if direct is not None:
            command = direct.pack("EVALSHA", script.sha, str(len(keys)), *keys, *map(_arg, args))
            self.round_trips += 1
            try:
                return await direct.send(command)
            except redis_errors.NoScriptError:
                await self._load(script)
                self.round_trips += 1
                return await direct.send(command)
        if isinstance(self.client, RedisCluster):
            # Topology discovery racing with the first concurrent commands (and their SCRIPT
            # LOADs) makes redis-py drop connections: discover once, under redis-py's own lock.
            await self.client.initialize()
        self.round_trips += 1
        try:
            return await self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            await self._load(script)
            self.round_trips += 1
            return await self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    async def run_packed(self, command: bytes, script: LuaScript) -> Any:
        """Run an EVALSHA of `script` packed by the caller with `direct` (a hot call whose first
        arguments never change packs them once). One server only."""
        assert self.direct is not None
        self.round_trips += 1
        try:
            return await self.direct.send(command)
        except redis_errors.NoScriptError:
            await self._load(script)
            self.round_trips += 1
            return await self.direct.send(command)

    async def _load(self, script: LuaScript) -> None:
        missed = self._loads.get(script.name, 0)
        async with self._load_lock:
            if self._loads.get(script.name, 0) == missed:
                self.round_trips += 1
                await self.client.script_load(script.source)
                self._loads[script.name] = missed + 1


_RUNNERS: weakref.WeakKeyDictionary[Redis | RedisCluster, LuaRunner] = weakref.WeakKeyDictionary()


def _arg(value: Arg) -> str | bytes:
    if isinstance(value, str | bytes):
        return value
    return repr(value) if isinstance(value, float) else str(value)
