"""Redis-backed `Stores` for `stores_from_url` (`redis://`, `rediss://`, `redis+cluster://`).

    redis://[[user]:password@]host:port/db      one Redis server
    rediss://…                                  the same over TLS (redis-py's `rediss` handling;
                                                query options such as `ssl_cert_reqs` pass through)
    redis+cluster://[[user]:password@]host:port Redis Cluster, any node as seed (topology is
                                                discovered on first use)

Every store shares one client, the bundle's (`Stores.client`, closed once by `Stores.close`; no
store closes it): `socket_connect_timeout` = `StoreOptions.timeout_s`, NO automatic retries, and
every operation is bounded as a whole by `_redis_guard.guarded` (`bounded` on the hot paths: the
same asyncio timeout of `timeout_s` and error translation), which also covers reads - a
per-socket read timeout would only add a task per command. A failed call fails fast as
`StoreUnavailableError`, and the decision pipeline applies its fail-open / fail-closed policy
instead of waiting. Building the client does not connect.

A decision's user-state read (list memberships + behaviour + preferences) is one EVALSHA of
user_state.lua on one server (package data next to user_state.py), a pipeline on a Cluster:
`RedisUserStateReader`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from smart_dispatch._redis_guard import LuaRunner, LuaScript, bounded, guarded
from smart_dispatch.behaviour.redis import RedisBehaviourStore, decode_behaviour, decode_behaviour_flat
from smart_dispatch.counters.redis import RedisCounterStore
from smart_dispatch.decisionlog.redis import RedisDecisionLog
from smart_dispatch.dispatch.redis_store import RedisDispatchStore
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.inbox.redis import RedisInboxStore
from smart_dispatch.lists.base import LIST_NAMES
from smart_dispatch.lists.redis import RedisListStore
from smart_dispatch.preferences.redis import RedisPreferenceStore, decode_preferences, decode_preferences_flat
from smart_dispatch.ratelimit.redis import RedisRateLimiter
from smart_dispatch.stores.base import StoreOptions, Stores
from smart_dispatch.user_state import UserState, UserStateReader

CLUSTER_SCHEME = "redis+cluster"

USER_STATE = LuaScript.load("smart_dispatch", "user_state.lua")
USER_STATE_SHA = USER_STATE.sha


def redis_client(url: str, timeout_s: float) -> Redis | RedisCluster:
    """A `redis.asyncio` client for `url` with tight timeouts and no retries (not connected yet).

    Every store operation is bounded by `asyncio.timeout` (`_redis_guard`); connecting by
    `timeout_s`. No socket timeout: redis-py 8 would otherwise apply its 5 s default to every
    command, wrapping each send in a task (~5-7% of a sidecar's CPU) for a bound ours undercuts.

    Raises `ConfigurationError` for a scheme other than redis, rediss, redis+cluster or a URL
    redis-py cannot parse.
    """
    parts = urlsplit(url)
    options: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": timeout_s,
        "socket_timeout": None,
        # redis-py 8 defaults these to "auto", and with them on its pool skips the check that
        # a pooled connection is still open: after a Redis restart every pooled connection
        # would fail one call ("Connection closed by server"). We use none of them (they are
        # Redis Enterprise's maintenance events).
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    try:
        if parts.scheme == CLUSTER_SCHEME:
            seed = urlunsplit(("redis", parts.netloc, "", parts.query, ""))
            return RedisCluster.from_url(seed, **options)
        if parts.scheme in ("redis", "rediss"):
            return Redis.from_url(url, **options)
    except ValueError as exc:
        raise ConfigurationError(f"invalid redis URL {url!r}: {exc}") from exc
    raise ConfigurationError(
        f"unknown redis URL scheme {parts.scheme!r} in {url!r}; known: redis, rediss, {CLUSTER_SCHEME}"
    )


def redis_stores(url: str, options: StoreOptions) -> Stores:
    """Every store on the Redis at `url`, sharing one client: the bundle's (`Stores.client`,
    closed by `Stores.close`; no store closes it)."""
    client = redis_client(url, options.timeout_s)
    counters = RedisCounterStore(client, prefix=options.prefix, timeout_s=options.timeout_s)
    lists = RedisListStore(client, prefix=options.prefix, timeout_s=options.timeout_s)
    behaviour = RedisBehaviourStore(client, prefix=options.prefix, timeout_s=options.timeout_s)
    dispatches = RedisDispatchStore(
        client, prefix=options.prefix, timeout_s=options.timeout_s, claim_timeout_s=options.claim_timeout_s
    )
    inbox = RedisInboxStore(client, prefix=options.prefix, timeout_s=options.timeout_s)
    preferences = RedisPreferenceStore(client, prefix=options.prefix, timeout_s=options.timeout_s)
    user_state = RedisUserStateReader(lists, behaviour, preferences, options.timeout_s)
    rate_limits = RedisRateLimiter(client, prefix=options.prefix, timeout_s=options.timeout_s)
    decisions = RedisDecisionLog(
        client,
        prefix=options.prefix,
        timeout_s=options.timeout_s,
        retention_s=options.decision_log_retention_s,
        max_entries=options.decision_log_max_entries,
    )
    return Stores(
        counters,
        lists,
        behaviour,
        dispatches,
        inbox,
        user_state,
        url,
        rate_limits,
        decisions=decisions,
        preferences=preferences,
        client=client,
    )


class RedisUserStateReader(UserStateReader):
    """Memberships, behaviour and preferences in ONE round trip, read afresh for every call (no
    cache: a list or preference change applies to the next decision of every sidecar).

    On one server: one EVALSHA of user_state.lua (key schema and reply in its header), packed here
    and run by the client's `_redis_guard.LuaRunner`, as `RedisCounterStore` runs its cap script
    (pipelined with concurrent calls; a SCRIPT LOAD and a resend when the server lost its script
    cache). On a Cluster the list
    sets and the user's hashes live in different slots: a non-transactional pipeline, one round
    trip per node (also where `DirectSender.for_client` declines the client).

    Raises `StoreUnavailableError` when Redis cannot answer within `timeout_s` (the whole call, all
    its round trips), `StoreError` on other Redis errors.
    """

    def __init__(
        self,
        lists: RedisListStore,
        behaviour: RedisBehaviourStore,
        preferences: RedisPreferenceStore,
        timeout_s: float,
    ) -> None:
        super().__init__(lists, behaviour, preferences)
        self._redis_lists = lists
        self._redis_behaviour = behaviour
        self._redis_preferences = preferences
        self._timeout_s = timeout_s
        self._lua = LuaRunner.of(lists.client, timeout_s)
        self._direct = self._lua.direct
        # EVALSHA <sha> <numkeys> <list keys...> <behaviour key> <preferences key> <user id>: all
        # but the last three arguments are the same for every call, so they are packed once.
        list_keys = [lists.key(name) for name in LIST_NAMES]  # type: ignore[arg-type]
        self._head = b""
        if self._direct is not None:
            argc = 3 + len(list_keys) + 3
            self._head = self._direct.pack_head(
                argc, "EVALSHA", USER_STATE_SHA, str(len(list_keys) + 2), *list_keys
            )

    async def read(self, user_id: str) -> UserState:
        await self._redis_behaviour.settle(user_id)  # this person's sends still waiting: written
        direct = self._direct
        if direct is None:
            return await self._read_pipelined(user_id)
        command = self._head + direct.pack_tail(
            self._redis_behaviour.key(user_id), self._redis_preferences.key(user_id), user_id
        )
        raw = await bounded(self._lua.run_packed(command, USER_STATE), self._timeout_s)
        n = len(LIST_NAMES)
        memberships = frozenset(name for name, member in zip(LIST_NAMES, raw, strict=False) if member)
        return UserState(memberships, decode_behaviour_flat(raw[n]), decode_preferences_flat(raw[n + 1]))

    async def _read_pipelined(self, user_id: str) -> UserState:
        async with guarded(self._timeout_s):
            pipe = self._redis_lists.client.pipeline(transaction=False)
            for name in LIST_NAMES:
                pipe.sismember(self._redis_lists.key(name), user_id)  # type: ignore[arg-type]
            pipe.hgetall(self._redis_behaviour.key(user_id))
            pipe.hgetall(self._redis_preferences.key(user_id))
            *found, behaviour, preferences = await pipe.execute()
        memberships = frozenset(name for name, member in zip(LIST_NAMES, found, strict=True) if member)
        return UserState(memberships, decode_behaviour(behaviour), decode_preferences(preferences.items()))
