"""The SMS vendors behind a running sidecar, against loopback fakes of their APIs
(tests/channels/sms_fakes.py), through `Dispatch` and `GetDispatch`:

- failover from a failing Alibaba Cloud to Tencent Cloud: each vendor gets its own template (the
  variant of sms.yaml that targets it), the message is delivered by the Tencent provider, and
  Tencent's receipt for it reaches the message;
- a rate-limited vendor alone: the dispatch waits at least the limit's window before its retry;
- an invalid number: no retry, no second provider; the plan fails over to nothing and ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import struct_pb2
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App

from tests.channels.sms_fakes import FakeAliyun, FakeTencent
from tests.support.redis_servers import free_port
from tests.support.sinks import HttpSink
from tests.support.waiting import eventually

RULES = """
categories: [{name: otp, required: true}]
rules:
  - name: otp
    when: {category: otp}
    then: {prefer: [sms], bypass_caps: true, bypass_quiet_hours: true}
"""
SMS_YAML = """
template_code: SMS_154950909
sign_name: 阿里云短信测试
params: {code: "{{ code }}"}
providers:
  - provider: tencent_backup
    template_code: 1110
    sign_name: 腾讯云
    params: ["{{ code }}", "5"]
"""
NUMBER = "+8613800138000"


@dataclass
class World:
    app: App
    stub: pb_grpc.SmartDispatchServiceStub
    aliyun: FakeAliyun
    tencent: FakeTencent
    admin: str

    async def dispatch(self, message_id: str, address: str = NUMBER) -> None:
        data = struct_pb2.Struct()
        data.update({"code": "492817"})
        await self.stub.Dispatch(
            pb.DispatchRequest(
                message=pb.Message(id=message_id, category="otp", template="otp", data=data),
                recipient=pb.Recipient(user_id="ada", timezone="UTC", addresses={"sms": address}),
            )
        )

    async def status(self, message_id: str) -> pb.DispatchStatus:
        return (await self.stub.GetDispatch(pb.GetDispatchRequest(message_id=message_id))).status

    async def settled(self, message_id: str, *states: int) -> pb.DispatchStatus:
        async def probe() -> pb.DispatchStatus | None:
            status = await self.status(message_id)
            return status if status.state in states else None

        return await eventually(probe, what=f"{message_id} in {states}")


@pytest.fixture
def start_world(
    make_app: Callable[..., App], tmp_path: Path
) -> Callable[..., AbstractAsyncContextManager[World]]:
    @asynccontextmanager
    async def start(*, failover: bool = True, **settings: Any) -> AsyncIterator[World]:
        (tmp_path / "rules").mkdir(exist_ok=True)
        (tmp_path / "rules" / "rules.yaml").write_text(RULES)
        (tmp_path / "templates" / "otp").mkdir(parents=True, exist_ok=True)
        (tmp_path / "templates" / "otp" / "sms.txt").write_text("Your code is {{ code }}")
        (tmp_path / "templates" / "otp" / "sms.yaml").write_text(SMS_YAML)
        aliyun, tencent = FakeAliyun(), FakeTencent()
        aliyun_sink, tencent_sink = await HttpSink(aliyun).start(), await HttpSink(tencent).start()
        entries: list[dict[str, Any]] = [
            {
                "name": "aliyun_primary",
                "type": "aliyun_sms",
                "access_key_id": aliyun.access_key_id,
                "access_key_secret_env": "SD_TEST_ALIYUN_SECRET",
                "endpoint": aliyun_sink.url,
                "retry": {"max_attempts": 2, "base_s": 0.05},
            },
            {
                "name": "tencent_backup",
                "type": "tencentcloud_sms",
                "secret_id": tencent.secret_id,
                "secret_key_env": "SD_TEST_TENCENT_SECRET",
                "sdk_app_id": tencent.sdk_app_id,
                "endpoint": tencent_sink.url,
            },
        ]
        providers = {"sms": entries if failover else entries[0]}
        (tmp_path / "providers.yaml").write_text(json.dumps(providers))
        port = free_port()
        try:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("SD_TEST_ALIYUN_SECRET", aliyun.access_key_secret)
                patch.setenv("SD_TEST_TENCENT_SECRET", tencent.secret_key)
                app = make_app(
                    rules_dir=tmp_path / "rules",
                    templates_dir=tmp_path / "templates",
                    providers_file=tmp_path / "providers.yaml",
                    metrics_port=port,
                    senders=2,
                    **settings,
                )
                async with app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                    stub = pb_grpc.SmartDispatchServiceStub(channel)
                    yield World(app, stub, aliyun, tencent, f"http://127.0.0.1:{port}")
        finally:
            await aliyun_sink.stop()
            await tencent_sink.stop()

    return start


async def test_failover_sends_the_tencent_template_and_tencents_receipt_reaches_the_message(
    start_world: Callable[..., AbstractAsyncContextManager[World]],
) -> None:
    async with start_world() as world:
        world.aliyun.script.extend(["retryable"] * 4)  # Alibaba Cloud is down

        await world.dispatch("otp-failover-1")
        status = await world.settled("otp-failover-1", pb.DISPATCH_STATE_DELIVERED)

        assert status.attempts[-1].provider == "tencent_backup"
        aliyun_query = world.aliyun.accepted[0].query
        assert (aliyun_query["TemplateCode"], aliyun_query["SignName"]) == ("SMS_154950909", "阿里云短信测试")
        assert json.loads(aliyun_query["TemplateParam"]) == {"code": "492817"}
        sent = world.tencent.accepted[0].json()
        assert (sent["TemplateId"], sent["SignName"], sent["TemplateParamSet"]) == (
            "1110",
            "腾讯云",
            ["492817", "5"],
        )
        assert sent["PhoneNumberSet"] == [NUMBER]
        assert not world.aliyun.refused and not world.tencent.refused  # both signed as documented

        record = await world.app.runtime.stores.dispatches.get_by_message("otp-failover-1")  # type: ignore[union-attr]
        serial = record.attempts[-1].provider_message_id  # type: ignore[union-attr]
        _, headers, body = world.tencent.receipt(serial, delivered=False)
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{world.admin}/receipts/tencent_backup", data=body, headers=headers) as reply,
        ):
            assert (reply.status, await reply.json()) == (200, {"result": 0, "errmsg": "OK"})

        async def failed() -> bool:
            decision = await world.stub.GetDecision(pb.GetDecisionRequest(message_id="otp-failover-1"))
            return any((e.kind, e.channel) == ("failed", "sms") for e in decision.history)

        await eventually(failed, what="Tencent's FAILED receipt in the message's history")


async def test_a_rate_limited_vendor_alone_makes_the_dispatch_wait_its_window(
    start_world: Callable[..., AbstractAsyncContextManager[World]],
) -> None:
    async with start_world(failover=False) as world:
        world.aliyun.script.append("rate_limited")  # 触发分钟级流控: one a minute per number

        await world.dispatch("otp-limited-1")
        status = await world.settled("otp-limited-1", pb.DISPATCH_STATE_SCHEDULED)

        attempt = status.attempts[-1]
        assert (attempt.outcome, attempt.provider) == ("retryable_error", "aliyun_primary")
        assert "isv.BUSINESS_LIMIT_CONTROL" in attempt.error
        wait_s = status.send_at.ToDatetime().timestamp() - attempt.at.ToDatetime().timestamp()
        assert wait_s >= 60.0


async def test_an_invalid_number_is_not_retried_nor_handed_to_the_next_vendor(
    start_world: Callable[..., AbstractAsyncContextManager[World]],
) -> None:
    async with start_world() as world:
        world.aliyun.script.append("permanent")

        await world.dispatch("otp-invalid-1")
        status = await world.settled("otp-invalid-1", pb.DISPATCH_STATE_FAILED)

        assert [(a.provider, a.outcome) for a in status.attempts] == [("aliyun_primary", "permanent_error")]
        assert "isv.MOBILE_NUMBER_ILLEGAL" in status.attempts[0].error
        assert not world.tencent.accepted
