"""The decision log store on memory, one Redis and a Cluster: entries by message id with their
history, dimensions, scans by time, day counts, and the retention and size bounds."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from smart_dispatch.decisionlog.base import DecisionLogStore, LogBatch, count_field
from smart_dispatch.stores import StoreOptions, stores_from_url

from tests.contract.conftest import PREFIX, TIMEOUT_S
from tests.contract.helpers import Backend

DIMS = {"day": "2026-12-01", "category": "promo", "channel": "sms", "rule": "r", "template": "t"}


def entry(message_id: str, at_ms: int, **extra: Any) -> dict[str, Any]:
    return {"message_id": message_id, "at_ms": at_ms, "verdict": "send", "dims": dict(DIMS), **extra}


def now_ms() -> int:
    return int(time.time() * 1000)


async def log_of(backend: Backend, **options: Any) -> AsyncIterator[DecisionLogStore]:
    stores = stores_from_url(backend.url, StoreOptions(timeout_s=TIMEOUT_S, prefix=PREFIX, **options))
    try:
        yield stores.decisions
    finally:
        await stores.close()


@pytest.fixture
async def decision_log(backend: Backend) -> AsyncIterator[DecisionLogStore]:
    async for store in log_of(backend):
        yield store


async def test_an_entry_is_found_by_message_id_with_its_history_in_order(decision_log: DecisionLogStore):
    t = now_ms()
    await decision_log.write(LogBatch(entries=[entry("m1", t, note="first")]))
    await decision_log.write(LogBatch(events=[("m1", {"kind": "attempt"}), ("m1", {"kind": "opened"})]))
    await decision_log.write(LogBatch(events=[("unknown", {"kind": "opened"})]))

    found = await decision_log.get("m1")
    assert found is not None and found["note"] == "first"
    assert [e["kind"] for e in found["history"]] == ["attempt", "opened"]
    assert await decision_log.get("unknown") is None
    # a message decided again: the newest entry, the history kept
    await decision_log.write(LogBatch(entries=[entry("m1", t + 5, note="again")]))
    again = await decision_log.get("m1")
    assert again is not None and again["note"] == "again" and len(again["history"]) == 2


async def test_dimensions_of_known_messages(decision_log: DecisionLogStore):
    await decision_log.write(LogBatch(entries=[entry("a", now_ms()), entry("b", now_ms())]))
    assert await decision_log.dims(["a", "zz", "b", "a"]) == {"a": DIMS, "b": DIMS}


async def test_a_scan_returns_the_entries_of_a_time_range_oldest_first(decision_log: DecisionLogStore):
    t = now_ms()
    entries = [entry(f"s{i}", t - 1000 * (1200 - i)) for i in range(1200)]  # more than a page
    await decision_log.write(LogBatch(entries=entries[600:]))
    await decision_log.write(LogBatch(entries=entries[:600]))

    scanned = [
        e["message_id"] async for e in decision_log.scan(entries[100]["at_ms"], entries[1100]["at_ms"])
    ]
    assert scanned == [f"s{i}" for i in range(100, 1100)]


async def test_day_counts_add_up(decision_log: DecisionLogStore):
    batch = LogBatch()
    batch.count("2026-12-01", count_field(DIMS, "sent"))
    batch.count("2026-12-01", count_field(DIMS, "cost"), 0.05)
    await decision_log.write(batch)
    await decision_log.write(batch)

    counts = await decision_log.counts(["2026-11-30", "2026-12-01"])
    assert list(counts) == ["2026-12-01"]
    assert counts["2026-12-01"][count_field(DIMS, "sent")] == 2
    assert counts["2026-12-01"][count_field(DIMS, "cost")] == pytest.approx(0.1)


async def test_the_log_keeps_the_newest_entries_within_its_size(backend: Backend):
    async for store in log_of(backend, decision_log_max_entries=3):
        t = now_ms()
        await store.write(LogBatch(entries=[entry(f"n{i}", t + i) for i in range(5)]))
        kept = [m for m in ("n0", "n1", "n2", "n3", "n4") if await store.get(m) is not None]
        assert kept == ["n2", "n3", "n4"]


async def test_entries_older_than_the_retention_are_dropped(backend: Backend):
    async for store in log_of(backend, decision_log_retention_s=60.0):
        t = now_ms()
        await store.write(LogBatch(entries=[entry("old", t - 120_000), entry("new", t)]))
        assert await store.get("old") is None
        assert await store.get("new") is not None
        assert [e["message_id"] async for e in store.scan(0, t + 1)] == ["new"]
