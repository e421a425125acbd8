"""Allow/deny lists in Redis: one set per list, `<prefix>:{list}:allow` and `<prefix>:{list}:deny`.

Both sets carry the hash tag `{list}`, so on Redis Cluster they share a slot and `memberships` is
one round trip there too (a non-transactional pipeline of two SISMEMBER). A decision reads the
memberships together with the user's behaviour hash (`stores.redis.RedisUserStateReader`, on one
server with user_state.lua, whose header repeats this key schema), never from a cache: a change
applies to the next decision of every sidecar.

The sets are shared by every sidecar on the same Redis and outlive restarts. The app adds the
configured members (`StoreOptions.allow` / `deny`) at start-up through `add`; `seed` does the
same for many members in one round trip. Several sidecars seeding the same sets is harmless.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from smart_dispatch._redis_guard import checked_prefix, guarded
from smart_dispatch.lists.base import LIST_NAMES, ListName, ListStore


class RedisListStore(ListStore):
    """`ListStore` over `redis.asyncio` (one server or a Cluster; the client is passed in, and
    closing it is up to whoever made it: `close` leaves it open).

    `timeout_s` bounds each operation. Raises `StoreUnavailableError` when Redis cannot answer in
    time, `StoreError` on other Redis failures.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "sd",
        timeout_s: float = 0.25,
    ) -> None:
        self._client = client
        self._prefix = checked_prefix(prefix)
        self._timeout_s = timeout_s

    @property
    def client(self) -> Redis | RedisCluster:
        return self._client

    def key(self, list_name: ListName) -> str:
        return f"{self._prefix}:{{list}}:{list_name}"

    async def seed(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        """Add `allow` / `deny` members (one round trip). Raises like every other call."""
        members: dict[ListName, tuple[str, ...]] = {"allow": tuple(allow), "deny": tuple(deny)}
        if not any(members.values()):
            return
        async with guarded(self._timeout_s):
            pipe = self._client.pipeline(transaction=False)
            for name, users in members.items():
                if users:
                    pipe.sadd(self.key(name), *users)
            await pipe.execute()

    async def add(self, list_name: ListName, user_id: str) -> bool:
        async with guarded(self._timeout_s):
            return bool(await self._client.sadd(self.key(list_name), user_id))

    async def remove(self, list_name: ListName, user_id: str) -> bool:
        async with guarded(self._timeout_s):
            return bool(await self._client.srem(self.key(list_name), user_id))

    async def memberships(self, user_id: str) -> frozenset[str]:
        async with guarded(self._timeout_s):
            pipe = self._client.pipeline(transaction=False)
            for name in LIST_NAMES:
                pipe.sismember(self.key(name), user_id)  # type: ignore[arg-type]
            found = await pipe.execute()
        return frozenset(name for name, member in zip(LIST_NAMES, found, strict=True) if member)
