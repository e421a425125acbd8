"""Frequency caps in Redis (`redis://`, `rediss://`, `redis+cluster://`).

All the logic is in `reserve.lua` / `refund.lua` (key schema, units and request/reply formats are
in their headers). Three modules: this one, the store (the script calls and their bound);
`redis_codec`, the key names, the request and the reply (a leaf); `redis_cluster`, the protocol
for a request whose caps span two Cluster slot groups (on the codec and the store's
`run_reserve`).
Instants and windows are whole milliseconds in Redis, exactly as `MemoryCounterStore` keeps them,
so both stores give identical outcomes; the clock is Redis `TIME` (no skew between sidecars).

Round trips per `reserve`:

- One Redis server: ONE `EVALSHA` whatever the options and caps, also with `defer` (the deferred
  instant is found and taken by the same script); plus one `SCRIPT LOAD` and a retry after the
  server lost its script cache.
- Redis Cluster: a script may only touch keys of one hash slot. A user's caps share the slot of
  `{u:<user>}`, every global cap the slot of `{g}`. When a request's caps all live in one slot
  group, it is still one call (also with `defer`). Otherwise 2 round trips, more when a global
  cap refuses what the user caps admitted; see `redis_cluster.py` for the protocol, the exact
  counts and its concurrency caveats. Caps are never over-admitted.

Lean hot path: what only depends on the options (key templates, the binary cap spec) is built
once per options tuple (`redis_codec.Plan`, cached here); a call sends the keys and 4 arguments
(6 with `defer`) and gets one flat array of integers back (`redis_codec.full_outcome`). On one
server the EVALSHA is packed by `_redis_guard.LuaRunner` and sent straight on a pooled connection
(`DirectSender`: redis-py's exchange without its per-command overhead); on a Cluster it goes
through `execute_command` (slot routing, redirections).

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

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from smart_dispatch._redis_guard import LuaRunner, LuaScript, bounded, checked_prefix, guarded
from smart_dispatch.counters.base import CapSpec, CounterStore, ReserveOutcome, ReserveRequest, to_ms
from smart_dispatch.counters.redis_cluster import reserve_split, spans_slot_groups
from smart_dispatch.counters.redis_codec import (
    SLIDING_COUNTER_MIN_LIMIT,
    Caps,
    KeySchema,
    Mode,
    Options,
    Plan,
    ScriptReply,
    control,
    decode,
    full_outcome,
    tail_args,
)

_PLAN_CACHE_SIZE = 4096

RESERVE = LuaScript.load("smart_dispatch.counters", "reserve.lua")
REFUND = LuaScript.load("smart_dispatch.counters", "refund.lua")


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
        self._keys = KeySchema(checked_prefix(prefix), sliding_counter_min_limit)
        self._timeout_s = timeout_s
        self.is_cluster = isinstance(client, RedisCluster)
        self._lua = LuaRunner.of(client, timeout_s)
        self._plans: dict[Options, Plan] = {}

    @property
    def round_trips(self) -> int:
        """EVALSHA and SCRIPT LOAD commands sent by this client's scripts (pipelined ones count
        one each)."""
        return self._lua.round_trips

    # -- key schema (documented in reserve.lua, built by redis_codec.KeySchema) -----------------

    def is_sliding(self, cap: CapSpec) -> bool:
        return self._keys.is_sliding(cap)

    def cap_key(self, cap: CapSpec, user_id: str) -> str:
        return self._keys.cap_key(cap, user_id)

    def marker_key(self, cap: CapSpec, member: str) -> str:
        return self._keys.marker_key(cap, member)

    def plan(self, options: Options) -> Plan:
        """The cached request parts of `options` (`KeySchema.plan`). Raises ValueError past 255
        options or caps per option, or 65535 keys."""
        plan = self._plans.get(options)
        if plan is None:
            plan = self._keys.plan(options)
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[options] = plan
        return plan

    # -- CounterStore ---------------------------------------------------------------------------

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        options = request.options
        if self.is_cluster and spans_slot_groups(options):
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
        keys = plan.key_names(request.user_id, request.member)
        return full_outcome(await bounded(self._lua.run(RESERVE, keys, args), self._timeout_s), options)

    async def refund(self, user_id: str, member: str, caps: Sequence[CapSpec]) -> None:
        groups = [list(caps)]
        if self.is_cluster:  # one call per hash slot group
            groups = [[c for c in caps if c.scope == "user"], [c for c in caps if c.scope != "user"]]
        async with guarded(self._timeout_s):
            for group in groups:
                if group:
                    await self.run_refund(user_id, member, group)

    # -- script calls (run_reserve is redis_cluster's `ScriptRunner`) -------------------------------

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
        ctl = control(mode, request.dry_run, eval_ok, eligible)
        args: list[str | bytes] = [request.member, "" if at_ms is None else str(at_ms), ctl, plan.spec]
        args += tail_args(request, defer, restore)
        raw = await self._lua.run(RESERVE, plan.key_names(request.user_id, request.member), args)
        return decode(raw, options, mode)

    async def run_refund(self, user_id: str, member: str, caps: Sequence[CapSpec]) -> int:
        """One refund.lua call; `caps` must share a hash slot on a Cluster."""
        keys = self._keys
        zsets = list(dict.fromkeys(keys.cap_key(c, user_id) for c in caps if not keys.is_sliding(c)))
        pairs: list[str] = []
        for cap in dict.fromkeys(c for c in caps if keys.is_sliding(c)):
            pairs += [keys.cap_key(cap, user_id), keys.marker_key(cap, member)]
        return int(await self._lua.run(REFUND, zsets + pairs, [member, str(len(zsets))]))
