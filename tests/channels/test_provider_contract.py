"""The provider contract, run over every vendor provider against a loopback fake of its real API
(tests/channels/sms_fakes.py: the fake checks the vendor's request signing the way the vendor
documents it and answers with the vendor's real reply shapes):

- success: a `SendResult` naming the provider, with the vendor's message id;
- a permanent error (an invalid number): not retryable, the address marked invalid;
- a retryable error (an outage): retryable;
- a rate limit: retryable, with the Retry-After the vendor gave (or the limit's window);
- a timeout: retryable, code ``timeout``;
- wrong credentials: refused by the fake's signature check, a provider-side (retryable) error;
- a receipt: a real sidecar sends through the provider; the vendor's receipt for that message,
  pushed to the admin port, becomes the message's FAILED / DELIVERED event (GetDecision's
  history); an unknown id is acknowledged and counted; a forged push is refused with 403.

To add a provider: write a `Case` (how to build the provider against its fake, what the fake's
scenarios must become, its providers-file entry) and append it to `CASES`. A provider without
receipts leaves `receipts` False and the receipt tests skip it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
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
from smart_dispatch.channels.aliyun_sms import AliyunSmsConfig, AliyunSmsProvider
from smart_dispatch.channels.base import Content, Provider, ProviderError
from smart_dispatch.channels.http_common import HttpOptions
from smart_dispatch.channels.registry import provider_types
from smart_dispatch.channels.tencent_sms import TencentSmsConfig, TencentSmsProvider
from smart_dispatch.channels.twilio_sms import TwilioConfig, TwilioProvider
from smart_dispatch.config import Settings

from tests.channels.helpers import Handler, HttpSink, delivery
from tests.channels.sms_fakes import FakeAliyun, FakeTencent, FakeTwilio, VendorFake
from tests.support.redis_servers import free_port
from tests.support.waiting import eventually

CONTENT = Content(
    text="Your code is 492817",
    template_id="SMS_0000001",
    sign_name="阿里云短信测试",
    fields={"code": "492817", "note": "a+b *c/d~é"},  # every kind of character the signing encodes
    variants={
        "tencentcloud_sms": Content(text="Your code is 492817", template_id="1110", fields={"1": "492817"})
    },
)


@dataclass(frozen=True)
class Case:
    """One provider type under the contract."""

    type: str
    fake: Callable[[], VendorFake]
    build: Callable[[Any, str, float, bool], Provider]
    """(fake, its URL, timeout_s, right credentials?) → the provider"""
    permanent_code: str
    rate_limit_s: float
    refused_code: str
    """the vendor's error code for a request signed with the wrong secret"""
    entry: Callable[[Any, str], tuple[dict[str, Any], dict[str, str]]]
    """(fake, its URL) → (providers-file entry, environment)"""
    address: str = "+8613800138000"
    receipts: bool = True

    def __str__(self) -> str:
        return self.type


def _aliyun(fake: FakeAliyun, url: str, timeout_s: float, right: bool) -> Provider:
    secret = fake.access_key_secret if right else "not-the-secret"
    config = AliyunSmsConfig(fake.access_key_id, secret, endpoint=url)
    return AliyunSmsProvider(config, options=HttpOptions(timeout_s=timeout_s))


def _tencent(fake: FakeTencent, url: str, timeout_s: float, right: bool) -> Provider:
    secret = fake.secret_key if right else "not-the-secret"
    config = TencentSmsConfig(fake.secret_id, secret, fake.sdk_app_id, sign_name="Acme", endpoint=url)
    return TencentSmsProvider(config, options=HttpOptions(timeout_s=timeout_s))


def _twilio(fake: FakeTwilio, url: str, timeout_s: float, right: bool) -> Provider:
    token = fake.auth_token if right else "not-the-token"
    config = TwilioConfig(fake.account_sid, token, sender="+15017122661", api_base=url)
    return TwilioProvider(config, options=HttpOptions(timeout_s=timeout_s))


CASES = [
    Case(
        "aliyun_sms",
        FakeAliyun,
        _aliyun,
        "isv.MOBILE_NUMBER_ILLEGAL",
        60.0,  # 分钟级流控: the per-minute limit's window (Alibaba Cloud sends no Retry-After)
        "SignatureDoesNotMatch",
        lambda fake, url: (
            {
                "type": "aliyun_sms",
                "access_key_id": fake.access_key_id,
                "access_key_secret_env": "ALIYUN_SECRET",
                "sign_name": "Acme",
                "endpoint": url,
                "receipt_token_env": "RECEIPT_TOKEN",
            },
            {"ALIYUN_SECRET": fake.access_key_secret, "RECEIPT_TOKEN": "receipt-token-1"},
        ),
    ),
    Case(
        "tencentcloud_sms",
        FakeTencent,
        _tencent,
        "InvalidParameterValue.IncorrectPhoneNumber",
        30.0,  # LimitExceeded.PhoneNumberThirtySecondLimit
        "AuthFailure.SignatureFailure",
        lambda fake, url: (
            {
                "type": "tencentcloud_sms",
                "secret_id": fake.secret_id,
                "secret_key_env": "TENCENT_SECRET",
                "sdk_app_id": int(fake.sdk_app_id),
                "endpoint": url,
                "receipt_token_env": "RECEIPT_TOKEN",
            },
            {"TENCENT_SECRET": fake.secret_key, "RECEIPT_TOKEN": "receipt-token-1"},
        ),
    ),
    Case(
        "twilio",
        FakeTwilio,
        _twilio,
        "21211",
        7.0,  # the 429's Retry-After
        "20003",
        lambda fake, url: (
            {
                "type": "twilio",
                "account_sid": fake.account_sid,
                "auth_token_env": "TWILIO_TOKEN",
                "from": "+15017122661",
                "api_base": url,
            },
            {"TWILIO_TOKEN": fake.auth_token},
        ),
        address="+15558675310",
    ),
]


@pytest.fixture(params=CASES, ids=str)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def vendor(
    case: Case, http_sink: Callable[[Handler], Awaitable[HttpSink]]
) -> tuple[VendorFake, HttpSink]:
    fake = case.fake()
    return fake, await http_sink(fake)  # type: ignore[arg-type]


@pytest.fixture
async def provider(case: Case, vendor: tuple[VendorFake, HttpSink]) -> AsyncIterator[Provider]:
    fake, sink = vendor
    built = case.build(fake, sink.url, 2.0, True)
    yield built
    await built.close()


async def send(case: Case, provider: Provider) -> Any:
    return await provider.send(delivery(address=case.address, content=CONTENT))


async def test_success(case: Case, vendor: tuple[VendorFake, HttpSink], provider: Provider) -> None:
    fake, _ = vendor

    result = await send(case, provider)

    assert result.provider == case.type
    assert result.provider_message_id
    assert len(fake.accepted) == 1 and not fake.refused  # signed as the vendor checks it


async def test_a_permanent_error(case: Case, vendor: tuple[VendorFake, HttpSink], provider: Provider) -> None:
    vendor[0].script.append("permanent")

    with pytest.raises(ProviderError) as caught:
        await send(case, provider)

    assert (caught.value.retryable, caught.value.code) == (False, case.permanent_code)
    assert caught.value.invalid_address  # the number itself is invalid
    assert caught.value.provider == case.type


async def test_a_retryable_error(case: Case, vendor: tuple[VendorFake, HttpSink], provider: Provider) -> None:
    vendor[0].script.append("retryable")

    with pytest.raises(ProviderError) as caught:
        await send(case, provider)

    assert caught.value.retryable
    assert not caught.value.invalid_address


async def test_a_rate_limit_with_retry_after(
    case: Case, vendor: tuple[VendorFake, HttpSink], provider: Provider
) -> None:
    vendor[0].script.append("rate_limited")

    with pytest.raises(ProviderError) as caught:
        await send(case, provider)

    assert caught.value.retryable
    assert caught.value.retry_after_s == case.rate_limit_s


async def test_a_timeout(case: Case, vendor: tuple[VendorFake, HttpSink], release: asyncio.Event) -> None:
    fake, sink = vendor
    fake.script.append("slow")
    fake.slow_s = 3.0
    quick = case.build(fake, sink.url, 0.3, True)
    try:
        with pytest.raises(ProviderError) as caught:
            await send(case, quick)
    finally:
        await quick.close()

    assert (caught.value.retryable, caught.value.code) == (True, "timeout")


async def test_wrong_credentials_are_refused_by_the_vendor_check(
    case: Case, vendor: tuple[VendorFake, HttpSink]
) -> None:
    fake, sink = vendor
    wrong = case.build(fake, sink.url, 2.0, False)
    try:
        with pytest.raises(ProviderError) as caught:
            await send(case, wrong)
    finally:
        await wrong.close()

    assert caught.value.code == case.refused_code
    assert caught.value.retryable  # the account's problem, not the message's: failover may help
    assert not fake.accepted


# -- receipts, through a running sidecar ----------------------------------------------------------

RULES = """
categories: [{name: otp, required: true}]
rules:
  - name: otp
    when: {category: otp}
    then: {prefer: [sms], bypass_caps: true, bypass_quiet_hours: true}
"""
SMS_YAML = """
template_code: SMS_0000001
sign_name: Acme
params: {code: "{{ code }}"}
providers:
  - {provider: tencentcloud_sms, template_code: 1110, params: ["{{ code }}"]}
"""
PUBLIC_URL = "https://notify.example.com/sd"


@dataclass
class Sidecar:
    app: App
    stub: pb_grpc.SmartDispatchServiceStub
    admin: str  # http://127.0.0.1:<admin port>

    async def send_otp(self, message_id: str, address: str) -> str:
        """Dispatch an OTP by SMS; the provider's message id once the provider accepted it."""
        await self.stub.Dispatch(
            pb.DispatchRequest(
                message=pb.Message(
                    id=message_id, category="otp", template="otp", data=_struct(code="492817")
                ),
                recipient=pb.Recipient(user_id="ada", timezone="UTC", addresses={"sms": address}),
            )
        )
        store = self.app.runtime.stores.dispatches  # type: ignore[union-attr]

        async def accepted() -> str | None:
            record = await store.get_by_message(message_id)
            ids = [a.provider_message_id for a in record.attempts if a.provider_message_id] if record else []
            return ids[-1] if ids else None

        return await eventually(accepted, what=f"{message_id} accepted by the provider")

    async def history(self, message_id: str) -> list[tuple[str, str]]:
        reply = await self.stub.GetDecision(pb.GetDecisionRequest(message_id=message_id))
        return [(event.kind, event.channel) for event in reply.history]

    async def push(self, case: Case, query: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        url = f"{self.admin}/receipts/{case.type}{'?' + query.lstrip('?') if query else ''}"
        async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as reply:
            return reply.status, await reply.read()


def _struct(**values: str) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    data.update(values)
    return data


@pytest.fixture
async def sidecar(case: Case, vendor: tuple[VendorFake, HttpSink], tmp_path: Path) -> AsyncIterator[Sidecar]:
    if not case.receipts:
        pytest.skip(f"{case.type} takes no receipts")
    fake, sink = vendor
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text(RULES)
    (tmp_path / "templates" / "otp").mkdir(parents=True)
    (tmp_path / "templates" / "otp" / "sms.txt").write_text("Your code is {{ code }}")
    (tmp_path / "templates" / "otp" / "sms.yaml").write_text(SMS_YAML)
    entry, env = case.entry(fake, sink.url)
    (tmp_path / "providers.yaml").write_text(json.dumps({"sms": entry}))
    port = free_port()
    settings = Settings(
        host="127.0.0.1",
        port=0,
        rules_dir=tmp_path / "rules",
        templates_dir=tmp_path / "templates",
        providers_file=tmp_path / "providers.yaml",
        store_url="memory://",
        metrics_port=port,
        public_url=PUBLIC_URL,
        senders=2,
    )
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        app = App(settings)
        async with app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield Sidecar(app, pb_grpc.SmartDispatchServiceStub(channel), f"http://127.0.0.1:{port}")


def _receipt(
    case: Case, fake: VendorFake, message_id: str, delivered: bool
) -> tuple[str, dict[str, str], bytes]:
    if isinstance(fake, FakeTwilio):
        return fake.receipt(message_id, delivered)
    assert isinstance(fake, FakeAliyun | FakeTencent)
    return fake.receipt(message_id, delivered, token="receipt-token-1")


async def test_a_receipt_becomes_the_messages_event(
    case: Case, vendor: tuple[VendorFake, HttpSink], sidecar: Sidecar
) -> None:
    fake, _ = vendor
    provider_id = await sidecar.send_otp("otp-receipt-1", case.address)
    if isinstance(fake, FakeTwilio):  # the send named the public receipt URL as StatusCallback
        assert fake.callbacks[provider_id] == f"{PUBLIC_URL}/receipts/twilio"

    status, body = await sidecar.push(case, *_receipt(case, fake, provider_id, delivered=False))

    assert status == 200
    assert body == sidecar.app.receipts.sources[case.type].receipt_ack[1]  # type: ignore[union-attr]

    async def failed() -> bool:
        return ("failed", "sms") in await sidecar.history("otp-receipt-1")

    await eventually(failed, what="the FAILED event in the message's history")
    assert sidecar.app.receipts.counts[case.type]["applied"] == 1  # type: ignore[union-attr]


async def test_a_receipt_for_an_unknown_message_is_acknowledged_and_counted(
    case: Case, vendor: tuple[VendorFake, HttpSink], sidecar: Sidecar
) -> None:
    fake, _ = vendor
    if isinstance(fake, FakeTwilio):  # Twilio posts to the URL a send named: make one
        fake.callbacks["SM" + "f" * 32] = f"{PUBLIC_URL}/receipts/twilio"
        pushed = fake.receipt("SM" + "f" * 32, delivered=True)
    else:
        pushed = _receipt(case, fake, "no-such-message-id", delivered=True)

    status, _ = await sidecar.push(case, *pushed)

    assert status == 200
    assert sidecar.app.receipts.counts[case.type]["unknown"] == 1  # type: ignore[union-attr]


async def test_a_forged_receipt_is_refused(
    case: Case, vendor: tuple[VendorFake, HttpSink], sidecar: Sidecar
) -> None:
    fake, _ = vendor
    provider_id = await sidecar.send_otp("otp-receipt-2", case.address)
    query, headers, body = _receipt(case, fake, provider_id, delivered=False)
    if isinstance(fake, FakeTwilio):
        headers = {**headers, "X-Twilio-Signature": fake.sign(f"{PUBLIC_URL}/receipts/twilio", {"x": "y"})}
    else:
        query = "?token=guessed"

    status, _ = await sidecar.push(case, query, headers, body)

    assert status == 403
    assert sidecar.app.receipts.counts[case.type]["rejected"] == 1  # type: ignore[union-attr]
    assert ("failed", "sms") not in await sidecar.history("otp-receipt-2")


def test_every_case_is_a_registered_provider_type() -> None:
    assert {case.type for case in CASES} <= set(provider_types())
