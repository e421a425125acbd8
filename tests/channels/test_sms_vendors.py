"""The SMS vendors one by one: each signer reproduces the worked example its vendor publishes;
error codes become the documented kind (permanent, provider-side, rate limited with its wait);
receipts parse, and forged or malformed ones are refused; the providers file builds them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from smart_dispatch.channels.aliyun_sms import AliyunSmsConfig, AliyunSmsProvider, acs3_authorization
from smart_dispatch.channels.base import Content, Provider, ProviderError
from smart_dispatch.channels.http_common import HttpOptions
from smart_dispatch.channels.receipts import Receipt, ReceiptRejected, ReceiptRequest
from smart_dispatch.channels.registry import ProviderConfigError, providers_from_config
from smart_dispatch.channels.tencent_sms import (
    TencentSmsConfig,
    TencentSmsProvider,
    tc3_authorization,
    template_params,
)
from smart_dispatch.channels.twilio_sms import TwilioConfig, TwilioProvider, twilio_signature
from smart_dispatch.channels.vendor_errors import window_s
from smart_dispatch.inbox.memory import MemoryInboxStore

from tests.channels.helpers import Handler, HttpSink, Received, delivery

# -- the vendors' published examples --------------------------------------------------------------


def test_acs3_reproduces_alibaba_clouds_published_example() -> None:
    """ "V3版本请求体&签名机制", the fixed-parameter example (RunInstances, empty body)."""
    headers = {
        "host": "ecs.cn-shanghai.aliyuncs.com",
        "x-acs-action": "RunInstances",
        "x-acs-version": "2014-05-26",
        "x-acs-date": "2023-10-26T10:22:32Z",
        "x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
        "x-acs-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    }
    query = {"ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd", "RegionId": "cn-shanghai"}

    authorization = acs3_authorization(
        method="POST",
        path="/",
        query=query,
        headers=headers,
        body=b"",
        access_key_id="YourAccessKeyId",
        access_key_secret="YourAccessKeySecret",
    )

    assert authorization == (
        "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,"
        "SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,"
        "Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    )


def test_tc3_reproduces_tencent_clouds_published_example() -> None:
    """ "Signature v3", the worked example (CVM DescribeInstances, timestamp 1551113065)."""
    body = b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
    headers = {"content-type": "application/json; charset=utf-8", "host": "cvm.tencentcloudapi.com"}

    authorization = tc3_authorization(
        secret_id="AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
        secret_key="Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
        service="cvm",
        timestamp=1551113065,
        headers=headers,
        body=body,
    )

    assert authorization == (
        "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, "
        "SignedHeaders=content-type;host, "
        "Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
    )


def test_twilio_signature_reproduces_twilios_published_example() -> None:
    """Webhook security, "validating signatures": auth token 12345."""
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }

    signature = twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params.items())

    assert signature == "GvWf1cFY/Q7PnoempGyD5oXAezc="


# -- error codes -----------------------------------------------------------------------------------

NOW = datetime(2026, 12, 1, 14, 30, tzinfo=UTC)  # 22:30 in China: 1.5 h to the next day there


def answering(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Handler:
    async def handler(_: Received) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return handler


async def outcome(provider: Provider, address: str = "+8613800138000") -> ProviderError:
    content = Content(text="hi", template_id="T1", sign_name="Acme", fields={"code": "1"})
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.send(delivery(address=address, content=content))
    finally:
        await provider.close()
    return caught.value


ALIYUN = [
    (200, "isv.MOBILE_NUMBER_ILLEGAL", "非法手机号", False, None),
    (200, "isv.TEMPLATE_MISSING_PARAMETERS", "模板缺少变量", False, None),
    (200, "isv.SMS_CONTENT_ILLEGAL", "短信内容包含禁止发送内容", False, None),
    (200, "isv.AMOUNT_NOT_ENOUGH", "账户余额不足", True, None),
    (200, "isv.SMS_TEMPLATE_ILLEGAL", "短信模板不合法", True, None),
    (200, "isp.SYSTEM_ERROR", "系统错误", True, None),
    (400, "SignatureDoesNotMatch", "Specified signature does not match our calculation.", True, None),
    (503, "ServiceUnavailable", "The request has failed due to a temporary failure.", True, None),
    (400, "Throttling.User", "Request was denied due to user flow control.", True, 1.0),
    (200, "isv.BUSINESS_LIMIT_CONTROL", "触发分钟级流控Permits:1", True, 60.0),
    (200, "isv.BUSINESS_LIMIT_CONTROL", "触发小时级流控Permits:5", True, 3600.0),
    (200, "isv.BUSINESS_LIMIT_CONTROL", "触发天级流控Permits:10", True, 5400.0),
    (200, "isv.DAY_LIMIT_CONTROL", "触发日发送限额", True, 5400.0),
    (200, "isv.SOMETHING_NEW", "an isv code not in the table", False, None),
    (200, "isp.SOMETHING_NEW", "an isp code not in the table", True, None),
    (502, "SomethingElse", "an unknown gateway code on a 5xx", True, None),
]


@pytest.mark.parametrize(("status", "code", "message", "retryable", "wait"), ALIYUN)
async def test_aliyun_error_codes(
    http_sink: Callable[[Handler], Awaitable[HttpSink]],
    status: int,
    code: str,
    message: str,
    retryable: bool,
    wait: float | None,
) -> None:
    sink = await http_sink(answering(status, {"Code": code, "Message": message, "RequestId": "r"}))
    config = AliyunSmsConfig("id", "secret", endpoint=sink.url)

    error = await outcome(AliyunSmsProvider(config, options=HttpOptions(timeout_s=2), clock=lambda: NOW))

    assert (error.code, error.retryable, error.retry_after_s) == (code, retryable, wait)
    assert error.invalid_address == (code == "isv.MOBILE_NUMBER_ILLEGAL")


def tencent_error(code: str) -> dict[str, Any]:
    return {"Response": {"Error": {"Code": code, "Message": "m"}, "RequestId": "r"}}


def tencent_status(code: str) -> dict[str, Any]:
    status = {"SerialNo": "", "PhoneNumber": "+86138", "Fee": 0, "Code": code, "Message": "m"}
    return {"Response": {"SendStatusSet": [status], "RequestId": "r"}}


TENCENT = [
    (tencent_status("InvalidParameterValue.IncorrectPhoneNumber"), False, None),
    (tencent_status("FailedOperation.PhoneNumberInBlacklist"), False, None),
    (tencent_status("FailedOperation.ContainSensitiveWord"), False, None),
    (tencent_status("LimitExceeded.PhoneNumberDailyLimit"), True, 5400.0),
    (tencent_status("LimitExceeded.PhoneNumberOneHourLimit"), True, 3600.0),
    (tencent_status("LimitExceeded.PhoneNumberThirtySecondLimit"), True, 30.0),
    (tencent_status("FailedOperation.TemplateIncorrectOrUnapproved"), True, None),
    (tencent_error("FailedOperation.InsufficientBalanceInSmsPackage"), True, None),
    (tencent_error("AuthFailure.SignatureFailure"), True, None),
    (tencent_error("RequestLimitExceeded"), True, 1.0),
    (tencent_error("InternalError.Timeout"), True, None),
    (tencent_error("InternalError.SomethingNew"), True, None),
    (tencent_error("LimitExceeded.SomethingNew"), True, 60.0),
    (tencent_error("InvalidParameter.SomethingNew"), False, None),
]


@pytest.mark.parametrize(("body", "retryable", "wait"), TENCENT)
async def test_tencent_error_codes(
    http_sink: Callable[[Handler], Awaitable[HttpSink]],
    body: dict[str, Any],
    retryable: bool,
    wait: float | None,
) -> None:
    sink = await http_sink(answering(200, body))
    config = TencentSmsConfig("AKID", "secret", "1400006666", endpoint=sink.url)

    error = await outcome(TencentSmsProvider(config, options=HttpOptions(timeout_s=2), clock=lambda: NOW))

    response = body["Response"]
    code = response["Error"]["Code"] if "Error" in response else response["SendStatusSet"][0]["Code"]
    assert (error.code, error.retryable, error.retry_after_s) == (code, retryable, wait)


TWILIO = [
    (400, 21211, {}, False, None),
    (400, 21610, {}, False, None),
    (400, 21614, {}, False, None),
    (400, 21408, {}, True, None),
    (401, 20003, {}, True, None),
    (429, 20429, {"Retry-After": "12"}, True, 12.0),
    (429, 20429, {}, True, 1.0),
    (500, 20500, {}, True, None),
    (400, 30007, {}, False, None),
    (400, 12345, {}, False, None),  # unknown 4xx
    (503, 0, {}, True, None),  # no JSON code: by status
]


@pytest.mark.parametrize(("status", "code", "headers", "retryable", "wait"), TWILIO)
async def test_twilio_error_codes(
    http_sink: Callable[[Handler], Awaitable[HttpSink]],
    status: int,
    code: int,
    headers: dict[str, str],
    retryable: bool,
    wait: float | None,
) -> None:
    body = {"code": code, "message": "m", "status": status} if code else {}
    sink = await http_sink(answering(status, body, headers))
    config = TwilioConfig("AC1", "token", sender="+15017122661", api_base=sink.url)

    error = await outcome(TwilioProvider(config, options=HttpOptions(timeout_s=2)), "+15558675310")

    assert (error.code, error.retryable, error.retry_after_s) == (str(code or status), retryable, wait)


def test_the_wait_until_the_next_day_or_month_is_in_china_standard_time() -> None:
    assert window_s("day", NOW) == 5400.0
    assert window_s("month", NOW) == 30 * 86400 + 5400.0  # from 1 December, 22:30 there
    assert window_s("month", datetime(2026, 12, 31, 15, 0, tzinfo=UTC)) == 3600.0  # 23:00 on the 31st
    assert window_s(30.0, NOW) == 30.0


def test_tencent_params_follow_the_template_numbers() -> None:
    assert template_params({"2": "b", "10": "c", "1": "a"}) == ["a", "b", "c"]
    assert template_params({"code": "1", "minutes": "5"}) == ["1", "5"]


async def test_a_template_without_a_code_for_the_provider_fails_permanently() -> None:
    aliyun = AliyunSmsProvider(AliyunSmsConfig("id", "s", endpoint="http://127.0.0.1:9"))
    with pytest.raises(ProviderError) as caught:
        await aliyun.send(delivery(content=Content(text="plain text only")))
    await aliyun.close()
    assert (caught.value.code, caught.value.retryable) == ("no_template", False)


# -- receipts ----------------------------------------------------------------------------------------


def pushed(
    body: bytes, *, url: str = "", query: dict[str, str] | None = None, **headers: str
) -> ReceiptRequest:
    return ReceiptRequest(url, query or {}, CIMultiDictProxy(CIMultiDict(headers)), body)


def test_aliyun_receipts_parse_and_need_the_token_when_one_is_set() -> None:
    provider = AliyunSmsProvider(AliyunSmsConfig("id", "s", receipt_token="t0ken"))
    reports = [
        {"biz_id": "900^0", "success": True, "err_code": "DELIVERED", "report_time": "2026-12-01 09:00:03"},
        {"biz_id": "901^0", "success": False, "err_code": "MK:0001", "report_time": "bad"},
    ]
    body = json.dumps(reports).encode()

    receipts = provider.parse_receipts(pushed(body, query={"token": "t0ken"}))

    assert receipts == [
        Receipt("900^0", True, datetime(2026, 12, 1, 1, 0, 3, tzinfo=UTC), "DELIVERED"),
        Receipt("901^0", False, None, "MK:0001"),
    ]
    for query in ({}, {"token": "guess"}):
        with pytest.raises(ReceiptRejected) as caught:
            provider.parse_receipts(pushed(body, query=query))
        assert caught.value.status == 403
    with pytest.raises(ReceiptRejected) as malformed:
        provider.parse_receipts(pushed(b'{"not": "an array"}', query={"token": "t0ken"}))
    assert malformed.value.status == 400


def test_tencent_receipts_parse() -> None:
    provider = TencentSmsProvider(TencentSmsConfig("AKID", "s", "1400006666"))
    report = {
        "user_receive_time": "2026-12-01 09:00:03",
        "report_status": "FAIL",
        "errmsg": "MK:0005",
        "sid": "5000:1",
    }

    assert provider.parse_receipts(pushed(json.dumps([report]).encode())) == [
        Receipt("5000:1", False, datetime(2026, 12, 1, 1, 0, 3, tzinfo=UTC), "MK:0005")
    ]
    with pytest.raises(ReceiptRejected):
        provider.parse_receipts(pushed(b"[{}]"))


def test_twilio_receipts_need_a_valid_signature_over_the_public_url() -> None:
    provider = TwilioProvider(TwilioConfig("AC1", "token", sender="+15017122661"))
    url = "https://notify.example.com/sd/receipts/twilio"
    params = {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"}
    body = "&".join(f"{k}={v}" for k, v in params.items()).encode()
    good = twilio_signature("token", url, params.items())

    assert provider.parse_receipts(pushed(body, url=url, **{"X-Twilio-Signature": good})) == [
        Receipt("SM1", False, None, "undelivered 30003")
    ]
    for request in (
        pushed(body, url=url),  # no signature
        pushed(body, url=url + "x", **{"X-Twilio-Signature": good}),  # another URL
        pushed(body.replace(b"30003", b"30004"), url=url, **{"X-Twilio-Signature": good}),  # tampered
        pushed(body, url="", **{"X-Twilio-Signature": good}),  # no SD_PUBLIC_URL to check against
    ):
        with pytest.raises(ReceiptRejected) as caught:
            provider.parse_receipts(request)
        assert caught.value.status == 403
    sent = {"MessageSid": "SM1", "MessageStatus": "sent"}
    signature = twilio_signature("token", url, sent.items())
    body = b"MessageSid=SM1&MessageStatus=sent"
    assert provider.parse_receipts(pushed(body, url=url, **{"X-Twilio-Signature": signature})) == [None]


# -- the providers file ----------------------------------------------------------------------------


def build(entry: dict[str, Any], env: dict[str, str] | None = None) -> Provider:
    return providers_from_config({"sms": entry}, env or {}, MemoryInboxStore())["sms"]


def test_the_providers_file_builds_each_type() -> None:
    env = {"S": "secret"}
    aliyun = build(
        {
            "type": "aliyun_sms",
            "name": "aliyun_primary",
            "access_key_id": "LTAI",
            "access_key_secret_env": "S",
        },
        env,
    )
    tencent = build(
        {"type": "tencentcloud_sms", "secret_id": "AKID", "secret_key_env": "S", "sdk_app_id": 1400006666},
        env,
    )
    twilio = build(
        {"type": "twilio", "account_sid": "AC1", "auth_token_env": "S", "messaging_service_sid": "MG1"}, env
    )

    assert isinstance(aliyun, AliyunSmsProvider) and aliyun.name == "aliyun_primary"
    assert isinstance(tencent, TencentSmsProvider) and tencent.config.sdk_app_id == "1400006666"
    assert isinstance(twilio, TwilioProvider) and twilio.config.messaging_service_sid == "MG1"


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"type": "aliyun_sms", "access_key_id": "LTAI"}, "access_key_secret_env"),
        (
            {"type": "aliyun_sms", "access_key_id": "LTAI", "access_key_secret_env": "UNSET"},
            "access_key_secret_env",
        ),
        ({"type": "tencentcloud_sms", "secret_id": "AKID", "secret_key_env": "S"}, "sdk_app_id"),
        ({"type": "twilio", "account_sid": "AC1", "auth_token_env": "S"}, "from"),
        (
            {
                "type": "twilio",
                "account_sid": "AC1",
                "auth_token_env": "S",
                "from": "+1",
                "messaging_service_sid": "MG1",
            },
            "from",
        ),
        (
            {"type": "twilio", "account_sid": "AC1", "auth_token_env": "S", "from": "+1", "colour": "red"},
            "colour",
        ),
    ],
)
def test_a_wrong_entry_names_the_key(entry: dict[str, Any], key: str) -> None:
    with pytest.raises(ProviderConfigError) as caught:
        build(entry, {"S": "secret"})
    assert caught.value.key == key
