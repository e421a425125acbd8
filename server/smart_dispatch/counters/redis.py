"""Frequency caps in Redis (`redis://`, `rediss://`, `redis+cluster://`).

All the logic is in `reserve.lua` / `refund.lua` (key schema, units and reply format are in their
headers); this module names the keys, encodes the request and decodes the reply. Instants and
windows are whole milliseconds in Redis, exactly as `MemoryCounterStore` keeps them, so both
stores give identical outcomes; the clock is Redis `TIME` (no skew between sidecars).

Round trips per `reserve`:

- One Redis server: ONE `EVALSHA` whatever the options and caps (plus one `SCRIPT LOAD` and a
  retry after the server lost its script cache).
- Redis Cluster: a script may only touch keys of one hash slot. A user's caps share the slot of
  `{u:<user>}`, every global cap the slot of `{g}`. When a request's caps all live in one slot
  group, it is still one call. Otherwise: 2 round trips (user group, then global group), plus 2
  per option whose global caps refuse after its user caps fitted (undo + next option). Caps are
  never over-admitted; see `_split.py` for the protocol and its concurrency caveats.

High-volume global caps (`scope="global"` and `limit > SLIDING_COUNTER_MIN_LIMIT`) use an
approximate sliding-window counter (two weighted fixed buckets, like `limits`) instead of one
sorted-set entry per message. Repeats and refunds still work through a per-message marker key that
lives as long as the message weighs in the counter (at most 2 windows): memory is one small
string per admitted send of the last 2 windows, not a sorted set holding `limit` members.

Failure modes: `StoreUnavailableError` when Redis cannot answer within `timeout_s` (the whole
call, all round trips); a timed-out reserve may still have been applied, and repeating it with
the same message id is a safe repeat. `StoreError` for other Redis errors.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from smart_dispatch._redis_guard import guarded
from smart_dispatch.counters.base import (
    CapSpec,
    CapUsage,
    CounterStore,
    OptionOutcome,
    ReserveOutcome,
    ReserveRequest,
    to_ms,
)
from smart_dispatch.errors import ConfigurationError

SLIDING_COUNTER_MIN_LIMIT = 1000
"""A global cap whose limit exceeds this uses the approximate sliding-window counter."""

Mode = Literal["F", "C", "D", "E", "U"]
"""reserve.lua modes: Full, Candidates, Duplicate check only, Evaluate only, Undo."""

EVALUATED, REPEAT, CANDIDATES = 0, 1, 2
"""reserve.lua reply kinds."""


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script shipped as package data, run with EVALSHA."""

    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> LuaScript:
        source = resources.files("smart_dispatch.counters").joinpath(name).read_text("utf-8")
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())


RESERVE = LuaScript.load("reserve.lua")
REFUND = LuaScript.load("refund.lua")


@dataclass(frozen=True, slots=True)
class ScriptReply:
    """A decoded reserve.lua reply; `entries` stay raw (their shape depends on `kind`),
    `previous` holds the recorded caps' former scores (ms) as sent back by mode "U"."""

    now_s: float
    at_ms: int
    kind: int
    chosen: int | None
    reserved_at_s: float | None
    entries: list[Any]
    previous: list[int | None]


class RedisCounterStore(CounterStore):
    """`CounterStore` over `redis.asyncio` (one server or a Cluster; the client is passed in).

    `timeout_s` bounds each operation (all its round trips); `round_trips` counts the commands
    sent, for tests and benchmarks. Raises `StoreUnavailableError` when Redis cannot answer in
    time, `StoreError` on other Redis failures, `ConfigurationError` for a prefix with braces.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "sd",
        timeout_s: float = 0.25,
        sliding_counter_min_limit: int = SLIDING_COUNTER_MIN_LIMIT,
        close_client: bool = True,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ConfigurationError(f"store prefix {prefix!r} must not contain braces (hash tags)")
        self._client = client
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._sliding_min = sliding_counter_min_limit
        self._close_client = close_client
        self.is_cluster = isinstance(client, RedisCluster)
        self.round_trips = 0
        self._load_lock = asyncio.Lock()
        self._loads: dict[str, int] = {}  # script name -> SCRIPT LOADs done

    # -- key schema (documented in reserve.lua) ------------------------------------------------

    def is_sliding(self, cap: CapSpec) -> bool:
        return cap.scope == "global" and cap.limit > self._sliding_min

    def cap_key(self, cap: CapSpec, user_id: str) -> str:
        if cap.scope == "user":
            return f"{self._prefix}:{{u:{user_id}}}:cap:{cap.name}"
        kind = "ctr" if self.is_sliding(cap) else "cap"
        return f"{self._prefix}:{{g}}:{kind}:{cap.name}"

    def marker_key(self, cap: CapSpec, member: str) -> str:
        return f"{self._prefix}:{{g}}:ctr:{cap.name}:m:{member}"

    # -- CounterStore ---------------------------------------------------------------------------

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        async with guarded(self._timeout_s):
            if self.is_cluster:
                from smart_dispatch.counters._split import reserve_split

                return await reserve_split(self, request)
            reply = await self.run_reserve(request, request.options, mode="F")
            return outcome_of(reply, request.options)

    async def refund(self, user_id: str, member: str, caps: Sequence[CapSpec]) -> None:
        groups = [list(caps)]
        if self.is_cluster:  # one call per hash slot group
            groups = [[c for c in caps if c.scope == "user"], [c for c in caps if c.scope != "user"]]
        async with guarded(self._timeout_s):
            for group in groups:
                if group:
                    await self.run_refund(user_id, member, group)

    async def close(self) -> None:
        if self._close_client:
            await self._client.aclose()

    # -- script calls (used by _split.py too) ---------------------------------------------------

    async def run_reserve(
        self,
        request: ReserveRequest,
        options: Sequence[Sequence[CapSpec]],
        *,
        mode: Mode,
        eligible: Sequence[bool] | None = None,
        at_ms: int | None = None,
        eval_ok: bool = True,
        restore: Sequence[int | None] = (),
    ) -> ScriptReply:
        """One reserve.lua call over `options` (all eligible unless told); `at_ms` overrides
        `request.at_s` (cluster calls after the first pin the first call's instant); `restore`
        is mode "U"'s list of former scores."""
        keys: dict[str, int] = {}

        def index(key: str) -> str:
            return str(keys.setdefault(key, len(keys) + 1))

        if at_ms is None and request.at_s is not None:
            at_ms = to_ms(request.at_s)
        args: list[str] = [
            request.member,
            "" if at_ms is None else str(at_ms),
            "1" if request.dry_run else "0",
            mode,
            "1" if eval_ok else "0",
            str(len(options)),
        ]
        for number, caps in enumerate(options):
            args += ["1" if eligible is None or eligible[number] else "0", str(len(caps))]
            for cap in caps:
                key = index(self.cap_key(cap, request.user_id))
                if self.is_sliding(cap):
                    kind, marker = "c", index(self.marker_key(cap, request.member))
                else:
                    kind, marker = "z", "0"
                args += [kind, key, str(cap.limit), str(to_ms(cap.window_s)), marker]
        args += ["" if score is None else str(score) for score in restore]
        raw = await self._evalsha(RESERVE, list(keys), args)
        now_ms, at, kind, chosen, reserved_ms, entries, previous = raw
        return ScriptReply(
            now_ms / 1000,
            int(at),
            int(kind),
            None if int(chosen) < 0 else int(chosen),
            instant(reserved_ms),
            list(entries),
            [None if p is None else int(p) for p in previous],
        )

    async def run_refund(self, user_id: str, member: str, caps: Sequence[CapSpec]) -> int:
        """One refund.lua call; `caps` must share a hash slot on a Cluster."""
        zsets = list(dict.fromkeys(self.cap_key(c, user_id) for c in caps if not self.is_sliding(c)))
        pairs: list[str] = []
        for cap in dict.fromkeys(c for c in caps if self.is_sliding(c)):
            pairs += [self.cap_key(cap, user_id), self.marker_key(cap, member)]
        return int(await self._evalsha(REFUND, zsets + pairs, [member, str(len(zsets))]))

    async def _evalsha(self, script: LuaScript, keys: list[str], args: list[str]) -> Any:
        if self.is_cluster:
            # Topology discovery racing with the first concurrent commands (and their SCRIPT LOADs)
            # makes redis-py drop connections: discover once, under redis-py's own lock. A no-op
            # once initialized.
            await self._client.initialize()
        self.round_trips += 1
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:  # first use, or the server restarted / flushed its script cache
            missed = self._loads.get(script.name, 0)
            async with self._load_lock:  # one SCRIPT LOAD for a burst of concurrent misses
                if self._loads.get(script.name, 0) == missed:
                    self.round_trips += 1
                    await self._client.script_load(script.source)
                    self._loads[script.name] = missed + 1
            self.round_trips += 1
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)


def instant(raw_ms: int | None) -> float | None:
    """A reply instant (ms, None = absent) in seconds, computed as MemoryCounterStore does."""
    return None if raw_ms is None else raw_ms / 1000


def option_outcome(caps: Sequence[CapSpec], entry: Sequence[Any]) -> OptionOutcome:
    """Decode one `{ allowed, retry_at, usages }` entry of a reserve.lua reply."""
    allowed, retry_at, usages = entry
    return OptionOutcome(
        bool(int(allowed)),
        tuple(
            CapUsage(cap, int(used), instant(reset)) for cap, (used, reset) in zip(caps, usages, strict=True)
        ),
        instant(retry_at),
    )


def outcome_of(reply: ScriptReply, options: Sequence[Sequence[CapSpec]]) -> ReserveOutcome:
    """The `ReserveOutcome` of a mode F/E reply over `options` (kind EVALUATED or REPEAT)."""
    evaluated: tuple[OptionOutcome, ...]
    if reply.kind == REPEAT:
        assert reply.chosen is not None
        evaluated = (option_outcome(options[reply.chosen], reply.entries[0]),)
    else:
        evaluated = tuple(option_outcome(caps, e) for caps, e in zip(options, reply.entries, strict=False))
    return ReserveOutcome(reply.now_s, reply.chosen, evaluated, reply.kind == REPEAT, reply.reserved_at_s)
