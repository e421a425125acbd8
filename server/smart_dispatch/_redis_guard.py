"""The boundary between redis-py and Smart Dispatch: a time bound and error translation.

Every Redis-backed store wraps each operation in `guarded(timeout_s)`:

- the whole operation (all its round trips, connection pool waits, cluster topology refreshes
  and reconnects) must finish within `timeout_s` seconds (`asyncio.timeout`; the clients have no
  socket timeout of their own, see `redis_stores.redis_client`); a cancelled read makes redis-py
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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

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
#: What `guarded` (and its inlined form) translates.
TRANSLATED: tuple[type[BaseException], ...] = (*UNAVAILABLE, redis_errors.RedisError)


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


def translated(exc: BaseException) -> StoreError:
    """The Smart Dispatch error for a redis-py (or timeout) failure: `StoreUnavailableError` when
    Redis is down, slow, loading or failing over, `StoreError` otherwise. For hot paths that
    inline `guarded`: ``except TRANSLATED as exc: raise translated(exc) from exc``."""
    if isinstance(exc, UNAVAILABLE):
        return StoreUnavailableError(f"redis unavailable: {type(exc).__name__}: {exc}")
    return StoreError(f"redis failed: {type(exc).__name__}: {exc}")


def checked_prefix(prefix: str) -> str:
    """A key prefix; braces would break the `{hash tag}` of every key. Raises ConfigurationError."""
    if "{" in prefix or "}" in prefix:
        raise ConfigurationError(f"store prefix {prefix!r} must not contain braces (hash tags)")
    return prefix


@dataclass(frozen=True, slots=True)
class DirectSender:
    """Sends commands packed here on a connection of a one-server client's pool, exactly the
    exchange `Redis.execute_command` makes: a connection from the pool (connected and checked by
    it), redis-py's own `send_packed_command` and `read_response` (socket timeouts, disconnect on
    any error or cancellation, reconnect on the next use, server errors such as NoScriptError
    raised), the connection released whatever happens. Left out is only per-command overhead:
    packing in redis-py, its retry wrapper, response callbacks and observability hooks.

    Build it with `for_client`, which declines (None) where those would do something: a Cluster,
    a single-connection client, retries configured, a custom callback for the command. Errors
    are redis-py's, for `guarded` (or its inlined equivalent) to bound and translate.
    """

    pool: ConnectionPool
    encoding: str
    encoding_errors: str

    @classmethod
    def for_client(cls, client: Redis | RedisCluster, command: str) -> DirectSender | None:
        if isinstance(client, RedisCluster) or client.single_connection_client:
            return None
        retry = client.get_retry()
        if (retry is not None and retry.get_retries() > 0) or command in client.response_callbacks:
            return None
        settings = client.connection_pool.connection_kwargs  # what the pool's encoder is made of
        encoding: str = settings.get("encoding", "utf-8")
        return cls(client.connection_pool, encoding, settings.get("encoding_errors", "strict"))

    def pack(self, *args: str | bytes) -> bytes:
        """`args` in the Redis protocol, as redis-py's `pack_command` makes them (str encoded as
        the client's encoder does)."""
        return self.pack_head(len(args), *args)

    async def send(self, command: bytes) -> Any:
        """Send a packed command and read its reply (redis-py's exceptions pass)."""
        connection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(command)
            return await connection.read_response()
        finally:
            await self.pool.release(connection)

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

    async def send_script(self, evalsha: bytes, source: str) -> Any:
        """Send a packed EVALSHA of the script `source` and read its reply. When the server lacks
        the script (first use, a restart, SCRIPT FLUSH): SCRIPT LOAD it and send once more; no
        lock, so a burst of concurrent misses loads it several times (harmless, idempotent)."""
        try:
            return await self.send(evalsha)
        except redis_errors.NoScriptError:
            await self.send(self.pack("SCRIPT", "LOAD", source))
            return await self.send(evalsha)
