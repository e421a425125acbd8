"""Frequency caps in Redis (`redis://`, `rediss://`, `redis+cluster://`).

All the logic is in `reserve.lua` / `refund.lua` (key schema, units and request/reply formats are
in their headers); this module names the keys, encodes the request and decodes the reply.
Instants and windows are whole milliseconds in Redis, exactly as `MemoryCounterStore` keeps them,
so both stores give identical outcomes; the clock is Redis `TIME` (no skew between sidecars).

Round trips per `reserve`:

- One Redis server: ONE `EVALSHA` whatever the options and caps, also with `defer` (the deferred
  instant is found and taken by the same script); plus one `SCRIPT LOAD` and a retry after the
  server lost its script cache.
- Redis Cluster: a script may only touch keys of one hash slot. A user's caps share the slot of
  `{u:<user>}`, every global cap the slot of `{g}`. When a request's caps all live in one slot
  group, it is still one call (also with `defer`). Otherwise 2 round trips, more when a global
  cap refuses what the user caps admitted; see `_split.py` for the protocol, the exact counts and
  its concurrency caveats. Caps are never over-admitted.

Lean hot path: what only depends on the options (key templates, the binary cap spec) is built
once per options tuple (`Plan`); a call sends the keys and 4 arguments (6 with `defer`) and gets
one flat array of integers back. On one server the EVALSHA is packed here and sent straight on a
pooled connection (`_redis_guard.DirectSender`: redis-py's exchange without its per-command
overhead); on a Cluster it goes through `execute_command` (slot routing, redirections).

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
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from smart_dispatch._redis_guard import TRANSLATED, LuaRunner, LuaScript, checked_prefix, guarded, translated
from smart_dispatch.counters.base import (
    CapSpec,
    CapUsage,
    CounterStore,
    OptionOutcome,
    ReserveOutcome,
    ReserveRequest,
    to_ms,
)

SLIDING_COUNTER_MIN_LIMIT = 1000
"""A global cap whose limit exceeds this uses the approximate sliding-window counter."""

Mode = Literal["F", "C", "D", "E", "M", "U"]  # reserve.lua modes (see its header)
EVALUATED, REPEAT, CANDIDATES = 0, 1, 2  # reserve.lua reply kinds
DEFER_NONE, DEFER_RECORDED, DEFER_REFUSED = 0, 1, 2  # reserve.lua defer states

Caps = tuple[CapSpec, ...]
Options = tuple[Caps, ...]
_PLAN_CACHE_SIZE = 4096


RESERVE = LuaScript.load("smart_dispatch.counters", "reserve.lua")
REFUND = LuaScript.load("smart_dispatch.counters", "refund.lua")


@dataclass(frozen=True, slots=True)
class Plan:
    """What a reserve.lua call over one options tuple sends, computed once: `keys` are templates
    (`user_head + user + tail`, a constant global key, or `head + member` for a counter marker),
    `spec` the encoded caps (ARGV 4, binary: see reserve.lua)."""

    keys: tuple[tuple[int, str, str], ...]  # (0 constant | 1 per user | 2 per member, head, tail)
    spec: bytes

    def key_names(self, user_id: str, member: str) -> list[str]:
        return [
            head if kind == 0 else (head + user_id + tail if kind == 1 else head + member)
            for kind, head, tail in self.keys
        ]


@dataclass(frozen=True, slots=True)
class ScriptReply:
    """A decoded reserve.lua reply. `entries`: the evaluated options (EVALUATED), the chosen one
    (REPEAT), or per option the held ones as allowed outcomes and None (CANDIDATES, `scores` then
    holds each held option's first score). `previous` holds the recorded caps' former scores (ms)
    for a later mode "U"; `deferred_usages` option 0's usages at `defer_at_ms` when deferred."""

    now_s: float
    at_ms: int
    kind: int
    chosen: int | None
    reserved_at_s: float | None
    entries: list[OptionOutcome | None]
    scores: list[int | None]
    previous: list[int | None]
    defer_state: int
    defer_at_ms: int | None
    deferred_usages: tuple[CapUsage, ...]


class RedisCounterStore(CounterStore):
    """`CounterStore` over `redis.asyncio` (one server or a Cluster; the client is passed in, and
    closing it is up to whoever made it: `close` leaves it open).

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
    ) -> None:
        self._client = client
        self._prefix = checked_prefix(prefix)
        self._timeout_s = timeout_s
        self._sliding_min = sliding_counter_min_limit
        self.is_cluster = isinstance(client, RedisCluster)
        self._lua = LuaRunner.of(client, timeout_s)
        self._plans: dict[Options, Plan] = {}

    @property
    def round_trips(self) -> int:
        """EVALSHA and SCRIPT LOAD commands sent by this client's scripts (pipelined ones count
        one each)."""
        return self._lua.round_trips

    # -- key schema (documented in reserve.lua) ------------------------------------------------

    def is_sliding(self, cap: CapSpec) -> bool:
        return cap.scope == "global" and cap.limit > self._sliding_min

    def cap_key(self, cap: CapSpec, user_id: str) -> str:
        kind, head, tail = self._key_template(cap)
        return head + user_id + tail if kind == 1 else head

    def marker_key(self, cap: CapSpec, member: str) -> str:
        return f"{self._prefix}:{{g}}:ctr:{cap.name}:m:{member}"

    def _key_template(self, cap: CapSpec) -> tuple[int, str, str]:
        if cap.scope == "user":
            return (1, f"{self._prefix}:{{u:", f"}}:cap:{cap.name}")
        kind = "ctr" if self.is_sliding(cap) else "cap"
        return (0, f"{self._prefix}:{{g}}:{kind}:{cap.name}", "")

    def plan(self, options: Options) -> Plan:
        """The cached request parts of `options` (see reserve.lua's ARGV 4). Raises ValueError
        past 255 options or caps per option, or 65535 keys."""
        plan = self._plans.get(options)
        if plan is None:
            keys: dict[tuple[int, str, str], int] = {}
            fields: list[float] = []
            for caps in options:
                for cap in caps:
                    key = keys.setdefault(self._key_template(cap), len(keys) + 1)
                    marker = 0
                    if self.is_sliding(cap):
                        template = (2, f"{self._prefix}:{{g}}:ctr:{cap.name}:m:", "")
                        marker = keys.setdefault(template, len(keys) + 1)
                    kind = b"c" if marker else b"z"
                    fields += [kind[0], key, float(cap.limit), float(to_ms(cap.window_s)), marker]
            sizes = [len(caps) for caps in options]
            layout = f">B{len(sizes)}B{'BHddH' * sum(sizes)}"
            try:
                spec = struct.pack(layout, len(sizes), *sizes, *fields)
            except struct.error as exc:
                raise ValueError(f"too many options, caps or keys for one reserve: {exc}") from exc
            plan = Plan(tuple(keys), spec)
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[options] = plan
        return plan

    # -- CounterStore ---------------------------------------------------------------------------

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        options = request.options
        if self.is_cluster and spans_slot_groups(options):
            from smart_dispatch.counters._split import reserve_split

            async with guarded(self._timeout_s):
                return await reserve_split(self, request)
        plan = self._plans.get(options) or self.plan(options)
        args: list[str | bytes] = [
            request.member,
            "" if request.at_s is None else str(to_ms(request.at_s)),
            b"F1" if request.dry_run else b"F0",
            plan.spec,
        ]
        args += tail_args(request, "a" if request.defer and not request.dry_run else "")
        # `guarded(self._timeout_s)` inlined: the same bound and translation, less per-call work
        try:
            async with asyncio.timeout(self._timeout_s):
                raw = await self._evalsha(RESERVE, plan.key_names(request.user_id, request.member), args)
        except TRANSLATED as exc:
            raise translated(exc) from exc
        return full_outcome(raw, options)

    async def refund(self, user_id: str, member: str, caps: Sequence[CapSpec]) -> None:
        groups = [list(caps)]
        if self.is_cluster:  # one call per hash slot group
            groups = [[c for c in caps if c.scope == "user"], [c for c in caps if c.scope != "user"]]
        async with guarded(self._timeout_s):
            for group in groups:
                if group:
                    await self.run_refund(user_id, member, group)

    # -- script calls (used by _split.py too) ---------------------------------------------------

    async def run_reserve(
        self,
        request: ReserveRequest,
        options: Sequence[Caps],
        *,
        mode: Mode,
        eligible: Sequence[bool] | None = None,
        at_ms: int | None = None,
        eval_ok: bool = True,
        defer: str = "",
        restore: Sequence[int | None] = (),
    ) -> ScriptReply:
        """One reserve.lua call over `options` (all eligible unless told); `at_ms` overrides
        `request.at_s` (cluster calls after the first pin the first call's instant); `defer` is
        ARGV 5 (with `request.not_after_s`); `restore` is mode "U"'s list of former scores."""
        options = tuple(options)
        plan = self.plan(options)
        if at_ms is None and request.at_s is not None:
            at_ms = to_ms(request.at_s)
        ctl = mode + ("1" if request.dry_run else "0") + ("1" if eval_ok else "0")
        if eligible is not None:
            ctl += "".join("1" if e else "0" for e in eligible)
        args: list[str | bytes] = [request.member, "" if at_ms is None else str(at_ms), ctl, plan.spec]
        args += tail_args(request, defer, restore)
        raw = await self._evalsha(RESERVE, plan.key_names(request.user_id, request.member), args)
        return decode(raw, options, mode)

    async def run_refund(self, user_id: str, member: str, caps: Sequence[CapSpec]) -> int:
        """One refund.lua call; `caps` must share a hash slot on a Cluster."""
        zsets = list(dict.fromkeys(self.cap_key(c, user_id) for c in caps if not self.is_sliding(c)))
        pairs: list[str] = []
        for cap in dict.fromkeys(c for c in caps if self.is_sliding(c)):
            pairs += [self.cap_key(cap, user_id), self.marker_key(cap, member)]
        return int(await self._evalsha(REFUND, zsets + pairs, [member, str(len(zsets))]))

    async def _evalsha(self, script: LuaScript, keys: list[str], args: Sequence[str | bytes]) -> Any:
        return await self._lua.run(script, keys, args)


def spans_slot_groups(options: Options) -> bool:
    """Whether the caps live in both Cluster slot groups (the user's and the global one)."""
    scopes = {cap.scope for caps in options for cap in caps}
    return len(scopes) > 1


def tail_args(request: ReserveRequest, defer: str, restore: Sequence[int | None] = ()) -> list[str | bytes]:
    """reserve.lua's ARGV 5 on: defer, not_after, the request clock, mode "U"'s former scores
    (nothing when none is needed)."""
    now = "" if request.now_s is None else str(to_ms(request.now_s))
    if not (defer or restore or now):
        return []
    return [
        defer,
        not_after_arg(request) if defer else "",
        now,
        *("" if s is None else str(s) for s in restore),
    ]


def not_after_arg(request: ReserveRequest) -> str:
    """`not_after_s` as the latest whole ms `t` with `t / 1000 <= not_after_s` (the comparison
    MemoryCounterStore makes), "" for none."""
    limit = request.not_after_s
    if limit is None or limit == math.inf:
        return ""
    if not math.isfinite(limit):  # NaN or -inf: no instant qualifies
        return "-1"
    ms = math.floor(limit * 1000)
    while (ms + 1) / 1000 <= limit:
        ms += 1
    while ms / 1000 > limit:
        ms -= 1
    return str(ms)


def instant(raw_ms: int | None) -> float | None:
    """A reply instant (ms, None = absent) in seconds, computed as MemoryCounterStore does."""
    return None if raw_ms is None else raw_ms / 1000


def _usages(raw: list[Any], i: int, caps: Caps) -> tuple[CapUsage, ...]:
    """The `used, reset_at` pairs of `caps` from `raw[i]` on."""
    usages = []
    for cap in caps:
        reset = raw[i + 1]
        usages.append(CapUsage(cap, raw[i], None if reset is None else reset / 1000))
        i += 2
    return tuple(usages)


def _entries(raw: list[Any], i: int, options: Sequence[Caps]) -> tuple[list[OptionOutcome], int]:
    """Evaluated options `{ allowed, retry_at, usages }` from `raw[i]` on, and the next index."""
    entries = []
    for caps in options:
        retry = raw[i + 1]
        entries.append(
            OptionOutcome(raw[i] == 1, _usages(raw, i + 2, caps), None if retry is None else retry / 1000)
        )
        i += 2 + 2 * len(caps)
    return entries, i


def decode(raw: list[Any], options: Options, mode: Mode) -> ScriptReply:
    """A reserve.lua reply (reserve.lua's "Reply") over `options`, sent in `mode`."""
    now, at, kind, chosen, reserved, defer_state, defer_at = raw[:7]
    i = 7
    entries: list[OptionOutcome | None] = []
    scores: list[int | None] = []
    if kind == REPEAT:
        found, i = _entries(raw, i, options[chosen : chosen + 1])
        entries += found
    elif kind == CANDIDATES:
        for caps in options:
            if raw[i] == 1:
                scores.append(raw[i + 1])
                entries.append(OptionOutcome(True, _usages(raw, i + 2, caps), None))
                i += 2 + 2 * len(caps)
            else:
                entries.append(None)
                scores.append(None)
                i += 2
    elif mode not in ("D", "M"):
        found, i = _entries(raw, i, options if chosen < 0 else options[: chosen + 1])
        entries += found
    previous = raw[i + 1 : i + 1 + raw[i]]
    deferred: tuple[CapUsage, ...] = ()
    if defer_state == DEFER_RECORDED:
        deferred = _usages(raw, i + 1 + raw[i], options[0])
    return ScriptReply(
        now / 1000,
        at,
        kind,
        None if chosen < 0 else chosen,
        None if reserved is None else reserved / 1000,
        entries,
        scores,
        previous,
        defer_state,
        defer_at,
        deferred,
    )


def full_outcome(raw: list[Any], options: Options) -> ReserveOutcome:
    """The `ReserveOutcome` of a mode "F" reply over `options`."""
    now, _, kind, chosen, reserved, defer_state, defer_at = raw[:7]
    if kind == REPEAT:
        found, _ = _entries(raw, 7, options[chosen : chosen + 1])
        return ReserveOutcome(now / 1000, chosen, (found[0],), True, reserved / 1000)
    found, i = _entries(raw, 7, options if chosen < 0 else options[: chosen + 1])
    if defer_state == DEFER_RECORDED:
        at_s = defer_at / 1000
        first = OptionOutcome(False, _usages(raw, i + 1 + raw[i], options[0]), at_s)
        return ReserveOutcome(now / 1000, 0, (first, *found[1:]), False, at_s, deferred=True)
    return ReserveOutcome(
        now / 1000,
        None if chosen < 0 else chosen,
        tuple(found),
        False,
        None if reserved is None else reserved / 1000,
    )
