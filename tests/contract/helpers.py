"""Shared by the contract suites: the backend a test runs on and request shorthands."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smart_dispatch.counters.base import CapSpec, CounterStore, ReserveOutcome, ReserveRequest

from tests.support.redis_servers import RedisCluster, RedisServer


@dataclass(frozen=True)
class Backend:
    """Where a parametrized test runs: `servers` is None for memory."""

    name: str
    url: str
    servers: RedisServer | RedisCluster | None

    @property
    def nodes(self) -> list[RedisServer]:
        if isinstance(self.servers, RedisCluster):
            return self.servers.nodes
        return [self.servers] if self.servers is not None else []


HOUR = 3600.0
DAY = 86400.0


def cap(
    name: str, limit: int, window_s: float, *, scope: str = "user", channel: str | None = None
) -> CapSpec:
    return CapSpec(name, limit, window_s, scope, channel)  # type: ignore[arg-type]


async def reserve(
    store: CounterStore,
    member: str,
    *options: Sequence[CapSpec],
    user: str = "alice",
    at_s: float | None = None,
    dry_run: bool = False,
) -> ReserveOutcome:
    request = ReserveRequest(user, member, tuple(tuple(o) for o in options), at_s, dry_run)
    return await store.reserve(request)


async def used(
    store: CounterStore, caps: Sequence[CapSpec], *, user: str = "alice", at_s: float
) -> list[int]:
    """What each cap counts at `at_s`, read with a dry run that consumes nothing."""
    probe = await reserve(store, "probe", caps, user=user, at_s=at_s, dry_run=True)
    return [u.used for u in probe.options[0].usages]
