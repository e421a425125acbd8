"""Several sidecars on one Redis: caps that never race past their limit, lists shared, outages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from decide_builders import codes, decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

from tests.support.redis_servers import RedisServer
from tests.support.sidecar import sidecar

pytestmark = pytest.mark.redis

DAILY_THREE = """
categories: [promo]
caps:
  - {name: promo_daily, limit: 3, window: 24h}
rules:
  - name: promo
    when: {category: promo}
    then: {prefer: [sms], caps: [promo_daily], on_cap: defer}
"""


@pytest.fixture
def redis_server(require_redis_binary) -> RedisServer:
    with RedisServer.start_new() as server:
        yield server


async def test_two_sidecars_racing_200_decisions_admit_exactly_three(redis_server, tmp_path: Path):
    (tmp_path / "promo.yaml").write_text(DAILY_THREE)
    args = ("--rules", str(tmp_path), "--store", redis_server.url)
    with sidecar(*args) as first, sidecar(*args) as second:
        async with (
            grpc.aio.insecure_channel(first.address) as a,
            grpc.aio.insecure_channel(second.address) as b,
        ):
            stubs = [pb_grpc.SmartDispatchServiceStub(a), pb_grpc.SmartDispatchServiceStub(b)]
            responses = await asyncio.gather(
                *(
                    stubs[i % 2].Decide(decide_request("promo", user="racer", message_id=f"p{i}"))
                    for i in range(200)
                )
            )

    verdicts = [r.verdict for r in responses]
    assert verdicts.count(pb.VERDICT_SEND) == 3
    assert verdicts.count(pb.VERDICT_DEFER) == 197


async def test_a_list_change_on_one_sidecar_applies_on_the_other(redis_server):
    args = ("--rules", "rules", "--store", redis_server.url)
    with sidecar(*args) as first, sidecar(*args) as second:
        async with (
            grpc.aio.insecure_channel(first.address) as a,
            grpc.aio.insecure_channel(second.address) as b,
        ):
            await pb_grpc.SmartDispatchServiceStub(a).AddListMember(
                pb.AddListMemberRequest(list=pb.LIST_KIND_DENY, user_id="u-shared")
            )
            response = await pb_grpc.SmartDispatchServiceStub(b).Decide(
                decide_request("otp", user="u-shared")
            )

    assert response.verdict == pb.VERDICT_SUPPRESS
    assert codes(response) == ["deny_listed"]


async def test_store_outage_follows_the_category_policy_and_recovers(redis_server, make_app):
    async with (
        make_app(store_url=redis_server.url, store_timeout_s=0.25) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        assert (await stub.Decide(decide_request(user="u-outage"))).verdict == pb.VERDICT_SEND

        # When Redis goes away
        redis_server.stop()
        started = time.monotonic()
        otp = await stub.Decide(decide_request("otp", user="u-outage"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Decide(decide_request(user="u-outage"))
        elapsed = time.monotonic() - started

        # Then a login code still goes out (fail open), marketing fails closed, both quickly
        assert otp.verdict == pb.VERDICT_SEND and "store_unavailable" in codes(otp)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "redis unavailable" in info.value.details()
        assert elapsed < 2.0

        # And once Redis is back, marketing works again (the server kept running)
        redis_server.start()
        recovered = await stub.Decide(decide_request(user="u-outage-2"))
        assert recovered.verdict == pb.VERDICT_SEND


async def test_after_a_redis_restart_no_call_fails_on_a_connection_of_the_old_server(redis_server):
    # Given a sidecar whose connection pool is warm from 64 concurrent decisions
    with sidecar("--rules", "rules", "--store", redis_server.url) as running:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = pb_grpc.SmartDispatchServiceStub(channel)

            async def burst(tag: str) -> list[grpc.StatusCode]:
                calls = [
                    stub.Decide(decide_request("transactional", user=f"u{i}", message_id=f"{tag}-{i}"))
                    for i in range(64)
                ]
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
                return [o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]

            assert await burst("warm") == []
            # When Redis restarts on the same port (every pooled connection dies with it)
            redis_server.stop()
            redis_server.start()  # returns once PING answers

            # Then not one call fails: dead connections are replaced before use
            assert await burst("after") == []
            assert await burst("again") == []
