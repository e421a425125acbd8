"""Shared by the contract suites: the backend a test runs on and request shorthands."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from smart_dispatch.counters.base import CapSpec, CounterStore, ReserveOutcome, ReserveRequest
from smart_dispatch.counters.memory import MemoryCounterStore

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
    defer: bool = False,
    not_after_s: float | None = None,
    now_s: float | None = None,
) -> ReserveOutcome:
    options_ = tuple(tuple(o) for o in options)
    request = ReserveRequest(user, member, options_, at_s, dry_run, defer, not_after_s, now_s)
    return await store.reserve(request)


def crowded_windows(scores: Sequence[float], limit: int, window_s: float) -> list[tuple[float, float]]:
    """Pairs of scores `limit` apart that fit in one window: any such pair means some window
    (t - window, t] holds more than `limit` entries. Empty when the cap was never exceeded."""
    ordered = sorted(scores)
    return [
        (ordered[i], ordered[i + limit])
        for i in range(len(ordered) - limit)
        if ordered[i + limit] - ordered[i] < window_s
    ]


async def used(
    store: CounterStore, caps: Sequence[CapSpec], *, user: str = "alice", at_s: float
) -> list[int]:
    """What each cap counts at `at_s`, read with a dry run that consumes nothing."""
    probe = await reserve(store, "probe", caps, user=user, at_s=at_s, dry_run=True)
    return [u.used for u in probe.options[0].usages]


async def replay_against_reference(store: CounterStore, t0: float, seed: int, steps: int = 120) -> None:
    """Random decisions (1-3 options of 0-3 user and global caps), repeats, dry runs, deferrals
    (half of them bounded by a not_after) and partial refunds, sent to `store` and to the
    in-process reference: every outcome must be equal (but `now_s`)."""
    rng = random.Random(seed)
    pool = [
        cap("u_hour", 2, HOUR),
        cap("u_day", 3, DAY),
        cap("u_sms", 1, HOUR, channel="sms"),
        cap("g_hour", 3, HOUR, scope="global"),
        cap("g_day", 5, DAY, scope="global"),
    ]
    reference = MemoryCounterStore()
    for _ in range(steps):
        user, member = rng.choice(["alice", "bob"]), rng.choice([f"m{i}" for i in range(8)])
        if rng.random() < 0.15:
            caps = rng.sample(pool, rng.randint(1, len(pool)))
            await reference.refund(user, member, caps)
            await store.refund(user, member, caps)
            continue
        options = tuple(tuple(rng.sample(pool, rng.randint(0, 3))) for _ in range(rng.randint(1, 3)))
        at_s = t0 + rng.uniform(-1800, 7200)
        dry_run = rng.random() < 0.2
        defer = rng.random() < 0.4
        not_after = at_s + rng.uniform(0, 2 * DAY) if defer and rng.random() < 0.5 else None
        request = ReserveRequest(user, member, options, at_s, dry_run, defer, not_after)
        expected = await reference.reserve(request)
        actual = await store.reserve(request)
        assert (actual.chosen, actual.duplicate, actual.deferred, actual.reserved_at_s, actual.options) == (
            expected.chosen,
            expected.duplicate,
            expected.deferred,
            expected.reserved_at_s,
            expected.options,
        ), f"{request}\n got      {actual}\n expected {expected}"
