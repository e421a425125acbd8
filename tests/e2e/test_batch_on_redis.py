"""A batch on Redis shares round trips: its items' state reads, cap scripts and learning counts
go pipelined, so a batch costs far fewer round trips than it has items (the server counts its
socket reads, `total_reads_processed`: one per round trip it serves)."""

from __future__ import annotations

import pytest
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.config import Settings

from tests.support.redis_servers import RedisServer

SHIPPED_RULES = __import__("pathlib").Path(__file__).resolve().parents[2] / "rules"
pytestmark = pytest.mark.redis


@pytest.fixture
def settings(single_redis: RedisServer) -> Settings:
    single_redis.flushall()
    # a generous store timeout: a loaded CI machine must not turn into flaky timeouts
    return Settings(
        host="127.0.0.1", port=0, rules_dir=SHIPPED_RULES, store_url=single_redis.url, store_timeout_s=2.0
    )


def reads(server: RedisServer) -> int:
    with server.client() as client:
        return int(client.info("stats")["total_reads_processed"])


def batch(tag: str, n: int) -> pb.DecideBatchRequest:
    categories = ("marketing", "transactional", "alert")
    return pb.DecideBatchRequest(
        requests=[
            decide_request(categories[i % 3], user=f"{tag}-u{i}", message_id=f"{tag}-{i}") for i in range(n)
        ]
    )


async def test_a_decide_batch_costs_fewer_round_trips_than_items(stub, single_redis: RedisServer):
    await stub.DecideBatch(batch("warm", 100))  # connections made, scripts loaded
    before = reads(single_redis)

    response = await stub.DecideBatch(batch("b", 600))

    trips = reads(single_redis) - before
    assert [r.WhichOneof("result") for r in response.results] == ["decision"] * 600
    assert {r.decision.verdict for r in response.results} <= {pb.VERDICT_SEND, pb.VERDICT_DEFER}
    # Each item needs at least three commands (state read, caps, learning count): 1,800 round
    # trips one by one; pipelined, fewer than one per item
    assert trips < 600, trips
    print(f"600 decisions: {trips} round trips")
