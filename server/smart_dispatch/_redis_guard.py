"""The boundary between redis-py and Smart Dispatch: a time bound and error translation.

Every Redis-backed store wraps each operation in `guarded(timeout_s)`:

- the whole operation (all its round trips) must finish within `timeout_s` seconds; the socket
  timeouts give up first in the normal case, `asyncio.timeout` is the backstop that also covers
  connection pools, cluster topology refreshes and reconnects;
- unreachable / overloaded / failing-over Redis -> `StoreUnavailableError` (retryable);
- any other Redis error (a script error, OOM) -> `StoreError` (not retryable);
- the original exception stays attached as `__cause__`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis import exceptions as redis_errors

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


@asynccontextmanager
async def guarded(timeout_s: float) -> AsyncIterator[None]:
    """Bound the enclosed Redis calls to `timeout_s` seconds and translate their errors.

    Raises `StoreUnavailableError` when Redis cannot answer in time, `StoreError` for other
    Redis failures.
    """
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except UNAVAILABLE as exc:
        raise StoreUnavailableError(f"redis unavailable: {type(exc).__name__}: {exc}") from exc
    except redis_errors.RedisError as exc:
        raise StoreError(f"redis failed: {type(exc).__name__}: {exc}") from exc


def checked_prefix(prefix: str) -> str:
    """A key prefix; braces would break the `{hash tag}` of every key. Raises ConfigurationError."""
    if "{" in prefix or "}" in prefix:
        raise ConfigurationError(f"store prefix {prefix!r} must not contain braces (hash tags)")
    return prefix
