"""The Dispatch end-to-end suites of test_dispatch.py and test_digest.py again, with every store
on a real Redis.

Same sidecar, same providers and faults; only the stores differ: claims come off the Redis
stream with their records, retries and deferrals are promoted from the schedule by the store's
upkeep, the update that finishes a claim acks it. At the end of each test no claim is left
pending and the ready stream is empty (every entry was acked, none is handed out again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from smart_dispatch.app import App
from smart_dispatch.config import Settings

# The same tests, collected here once more: they get this module's `make_app` (Redis stores).
from test_digest import *  # noqa: F403
from test_digest import stub  # noqa: F401 - the fixture, built with this module's make_app
from test_dispatch import *  # noqa: F403
from test_dispatch import world  # noqa: F401 - the fixture, built with this module's make_app

from tests.support.redis_servers import RedisServer

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules"
pytestmark = pytest.mark.redis


@pytest.fixture
def make_app(single_redis: RedisServer, ready_stream_drained: None) -> Callable[..., App]:
    def build(**overrides: object) -> App:
        base = Settings(host="127.0.0.1", port=0, rules_dir=SHIPPED_RULES, store_url=single_redis.url)
        return App(replace(base, **overrides))  # type: ignore[arg-type]

    return build


@pytest.fixture
def ready_stream_drained(single_redis: RedisServer) -> Iterator[None]:
    """A flushed server before the test; after it, nothing pending and nothing left to claim."""
    single_redis.flushall()
    yield
    with single_redis.client() as client:
        ready = "sd:{d}:ready"
        if client.exists(ready):
            assert client.xpending(ready, "senders")["pending"] == 0
            assert client.xlen(ready) == 0
