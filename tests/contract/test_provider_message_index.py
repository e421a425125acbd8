"""The dispatch store's index of provider message ids (what delivery receipts carry), on memory,
one Redis and a Cluster: a remembered id leads to its dispatch as stored now; ids are per
provider; an unknown id leads nowhere."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from smart_dispatch.dispatch.model import DispatchState
from smart_dispatch.dispatch.store import DispatchStore
from smart_dispatch.stores import StoreOptions, stores_from_url

from tests.contract.helpers import Backend
from tests.contract.test_dispatch_store import record


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[DispatchStore]:
    stores = stores_from_url(backend.url, StoreOptions(timeout_s=2.0, prefix="t"))
    try:
        yield stores.dispatches
    finally:
        await stores.close()


async def test_a_remembered_provider_message_id_leads_to_its_dispatch_as_stored_now(
    store: DispatchStore,
) -> None:
    created, _ = await store.create(record(1))
    await store.remember_provider_message("aliyun_primary", "9006197469364984400", created.dispatch_id)
    sending = await store.update(created.moved(DispatchState.SENDING, created.created_at), created.version)
    assert sending is not None

    found = await store.get_by_provider_message("aliyun_primary", "9006197469364984400")

    assert found is not None
    assert (found.dispatch_id, found.message.id, found.state) == ("d1", "m1", DispatchState.SENDING)


async def test_ids_are_per_provider_and_unknown_ones_lead_nowhere(store: DispatchStore) -> None:
    first, _ = await store.create(record(1))
    second, _ = await store.create(record(2))
    await store.remember_provider_message("a", "b:c", first.dispatch_id)
    await store.remember_provider_message("a:b", "c", second.dispatch_id)  # no clash with the above

    assert (await store.get_by_provider_message("a", "b:c")).dispatch_id == "d1"  # type: ignore[union-attr]
    assert (await store.get_by_provider_message("a:b", "c")).dispatch_id == "d2"  # type: ignore[union-attr]
    assert await store.get_by_provider_message("tencent_backup", "b:c") is None
    assert await store.get_by_provider_message("a", "never-sent") is None
