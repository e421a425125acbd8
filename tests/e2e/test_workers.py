"""`serve --workers N`: several processes share one port and one Redis, and stop together."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc

from tests.support.redis_servers import RedisServer
from tests.support.sidecar import address_of, spawn, stop

pytestmark = pytest.mark.redis
RULES = """
categories: [promo]
caps:
  - {name: promo_daily, limit: 3, window: 24h}
rules:
  - {name: promo, when: {category: promo}, then: {prefer: [sms], caps: [promo_daily], on_cap: defer}}
"""


async def test_two_processes_share_the_port_and_the_caps(require_redis_binary, tmp_path: Path):
    (tmp_path / "promo.yaml").write_text(RULES)
    with RedisServer.start_new() as redis_server:
        process = spawn("--workers", "2", "--rules", str(tmp_path), "--store", redis_server.url)
        try:
            port = address_of(process)
            verdicts = []
            for i in range(12):  # a new connection each time: the kernel spreads them
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    response = await pb_grpc.SmartDispatchServiceStub(channel).Decide(
                        decide_request("promo", user="shared-user", message_id=f"p{i}")
                    )
                    verdicts.append(response.verdict)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
        finally:
            stop(process)

    assert verdicts.count(pb.VERDICT_SEND) == 3
    assert verdicts.count(pb.VERDICT_DEFER) == 9


def test_more_than_one_worker_needs_a_shared_store(tmp_path: Path):
    process = spawn("--workers", "2", "--rules", "rules")
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 1
    assert "--workers 2 needs a shared store" in stderr
