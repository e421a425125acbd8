"""The decision log in the store, over gRPC: `GetDecision` answers from any sidecar sharing the
store and after a restart, with what happened to the message later; nothing personal is kept."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App
from smart_dispatch.config import Settings

from tests.support.redis_servers import RedisServer
from tests.support.waiting import eventually

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules"
pytestmark = pytest.mark.redis
PHONE, EMAIL, USER = "+8613800138000", "grace.hopper@example.com", "user-grace-1906"


@contextlib.asynccontextmanager
async def sidecar(
    redis: RedisServer, tmp_path: Path, **overrides: object
) -> AsyncIterator[pb_grpc.SmartDispatchServiceStub]:
    providers = tmp_path / "providers.yaml"
    providers.write_text("in_app: {type: inbox}\nemail: {type: stub}\nsms: {type: stub}\n")
    settings = Settings(
        host="127.0.0.1", port=0, rules_dir=SHIPPED_RULES, store_url=redis.url, providers_file=providers,
        senders=2, log_key="k1", **overrides,  # type: ignore[arg-type]
    )  # fmt: skip
    async with App(settings) as app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.SmartDispatchServiceStub(channel)


def request(message_id: str) -> pb.DecideRequest:
    return decide_request(
        "transactional",
        user=USER,
        message_id=message_id,
        addresses={"sms": PHONE, "email": EMAIL, "in_app": "inbox-grace"},
        attributes={"contact": EMAIL, "tier": "gold"},
    )


async def test_any_sidecar_answers_for_a_decision_another_took(single_redis: RedisServer, tmp_path: Path):
    single_redis.flushall()
    async with sidecar(single_redis, tmp_path) as first, sidecar(single_redis, tmp_path) as second:
        decided = await first.Decide(request("receipt-1"))

        async def found() -> pb.GetDecisionResponse | None:
            try:
                return await second.GetDecision(pb.GetDecisionRequest(message_id="receipt-1"))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.NOT_FOUND
                return None

        answer = await eventually(found, 5, "the decision, on the other sidecar")
        assert answer.decision.decision_id == decided.decision_id
        assert answer.category == "transactional"
        assert next(s.address for s in answer.decision.steps) in ("g***@example.com", "+8****00", "****")


async def test_the_log_survives_a_restart_and_tells_what_happened_later(
    single_redis: RedisServer, tmp_path: Path
):
    single_redis.flushall()
    async with sidecar(single_redis, tmp_path) as stub:
        decide = request("receipt-2")
        accepted = await stub.Dispatch(pb.DispatchRequest(message=decide.message, recipient=decide.recipient))
        channel = accepted.decision.steps[0].channel

        async def delivered() -> bool:
            status = (await stub.GetDispatch(pb.GetDispatchRequest(dispatch_id=accepted.dispatch_id))).status
            return status.state == pb.DISPATCH_STATE_DELIVERED

        await eventually(delivered, 5, "the delivery")
        await stub.ReportEvent(
            pb.ReportEventRequest(
                user_id=USER, message_id="receipt-2", channel=channel, kind=pb.EVENT_KIND_OPENED
            )
        )

    async with sidecar(single_redis, tmp_path) as restarted:
        answer = await restarted.GetDecision(pb.GetDecisionRequest(message_id="receipt-2"))
        assert answer.decision.decision_id == accepted.decision.decision_id
        assert answer.dispatch_id == accepted.dispatch_id
        kinds = [(e.kind, e.channel) for e in answer.history]
        assert ("attempt", channel) in kinds and ("opened", channel) in kinds
        assert kinds.index(("attempt", channel)) < kinds.index(("opened", channel))
        assert "delivered" in next(e.detail for e in answer.history if e.kind == "attempt")


async def test_nothing_personal_is_kept_and_the_user_is_a_keyed_pseudonym(
    single_redis: RedisServer, tmp_path: Path
):
    single_redis.flushall()
    async with sidecar(single_redis, tmp_path) as stub:
        for n in range(3):
            decide = request(f"private-{n}")
            await stub.Dispatch(pb.DispatchRequest(message=decide.message, recipient=decide.recipient))

    with single_redis.client() as client:
        keys = [k for k in client.keys("sd:{log}:*")]
        assert len([k for k in keys if b":m:" in k]) == 3
        values = []
        for key in keys:
            kind = client.type(key)
            if kind == b"string":
                values.append(client.get(key))
            elif kind == b"list":
                values += client.lrange(key, 0, -1)
            elif kind == b"zset":
                values += client.zrange(key, 0, -1)
        stored = b"\n".join(values)
    for secret in (PHONE, EMAIL, USER, "13800138000", "grace.hopper"):
        assert secret.encode() not in stored, secret
    assert b"hmac:" in stored and b"gold" in stored  # the profile stays, masked where personal


async def test_a_burst_of_decisions_is_written_in_several_parts_and_none_is_lost(
    single_redis: RedisServer, tmp_path: Path
):
    # Given a sidecar that flushes its log rarely, so one flush carries a burst
    single_redis.flushall()
    async with sidecar(single_redis, tmp_path) as stub:
        # When 200 decisions are taken at once (more than one write's worth: WRITE_ENTRIES)
        batch = pb.DecideBatchRequest(requests=[request(f"burst-{i}") for i in range(200)])
        results = (await stub.DecideBatch(batch)).results
        assert all(r.WhichOneof("result") == "decision" for r in results)

        # Then every one of them is in the store, with the day's analytics count
        async def all_written() -> bool | None:
            with single_redis.client() as client:
                written = sum(1 for _ in client.scan_iter(match="*m:burst-*", count=1000))
            return True if written == 200 else None

        await eventually(all_written, what="200 entries in the store")
        stats = await stub.GetStats(pb.GetStatsRequest())
        assert sum(row.decided for row in stats.rows) == 200
