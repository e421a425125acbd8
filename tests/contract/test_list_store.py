"""The ListStore contract (lists/base.py), one suite on memory, one Redis and a Cluster.

The `list_store` fixture starts with "vip" on the allow list and "blocked" on the deny list.
"""

from __future__ import annotations

import pytest
from smart_dispatch.lists.base import ListStore
from smart_dispatch.lists.redis import RedisListStore
from smart_dispatch.stores.redis import redis_client

from tests.contract.helpers import Backend


async def test_added_members_are_on_their_lists(list_store: ListStore):
    assert await list_store.memberships("vip") == frozenset({"allow"})
    assert await list_store.memberships("blocked") == frozenset({"deny"})
    assert await list_store.memberships("alice") == frozenset()


async def test_add_and_remove_report_whether_anything_changed(list_store: ListStore):
    assert await list_store.add("deny", "alice") is True
    assert await list_store.add("deny", "alice") is False
    assert await list_store.memberships("alice") == frozenset({"deny"})

    assert await list_store.remove("deny", "alice") is True
    assert await list_store.remove("deny", "alice") is False
    assert await list_store.memberships("alice") == frozenset()


async def test_a_user_can_be_on_both_lists(list_store: ListStore):
    await list_store.add("deny", "vip")
    assert await list_store.memberships("vip") == frozenset({"allow", "deny"})


async def test_members_can_be_removed(list_store: ListStore):
    assert await list_store.remove("allow", "vip") is True
    assert await list_store.memberships("vip") == frozenset()


async def test_lists_are_independent(list_store: ListStore):
    await list_store.add("allow", "alice")
    assert await list_store.remove("deny", "alice") is False
    assert await list_store.memberships("alice") == frozenset({"allow"})


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_redis_lists_share_one_slot(list_store: ListStore, backend: Backend):
    await list_store.add("allow", "alice")
    keys = set()
    for node in backend.nodes:
        with node.client() as client:
            keys |= {key.decode() for key in client.scan_iter("t:*")}
    assert keys == {"t:{list}:allow", "t:{list}:deny"}


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_seed_adds_many_members_at_once(backend: Backend):
    client = redis_client(backend.url, 2.0)
    lists = RedisListStore(client, prefix="t")
    try:
        await lists.seed(allow=["a1", "a2"], deny=["d1"])
        await lists.seed()  # nothing to add: no round trip
        assert [await lists.memberships(u) for u in ("a1", "a2", "d1", "x")] == [
            frozenset({"allow"}),
            frozenset({"allow"}),
            frozenset({"deny"}),
            frozenset(),
        ]
    finally:
        await lists.close()
        await client.aclose()
