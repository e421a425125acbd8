"""The WeChat template-message provider against a loopback server playing the WeChat API."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from smart_dispatch.channels.base import Content, ProviderError
from smart_dispatch.channels.http_common import HttpOptions
from smart_dispatch.channels.wechat import WeChatConfig, WeChatProvider

from tests.channels.helpers import Handler, HttpSink, Received, delivery

CONTENT = Content(
    template_id="TM001",
    url="https://example.com/orders/7",
    fields={"first": "Hi Ann", "keyword1": "123", "remark": {"value": "bye", "color": "#173177"}},
)


@dataclass
class FakeWeChat:
    """Token endpoint issuing tok1, tok2, …; send endpoint answering from `replies` (errcode
    0 when empty) and accepting only the newest token."""

    token_delay_s: float = 0.0
    expires_in: int = 7200
    token_error: dict[str, Any] | None = None
    replies: deque[dict[str, Any]] = field(default_factory=deque)
    issued: list[str] = field(default_factory=list)
    sent: list[tuple[str, Any]] = field(default_factory=list)  # (token, payload)

    async def __call__(self, request: Received) -> web.StreamResponse:
        if request.path == "/cgi-bin/token":
            assert request.query == {
                "grant_type": "client_credential",
                "appid": "wx123",
                "secret": "wx-secret",
            }
            await asyncio.sleep(self.token_delay_s)
            if self.token_error:
                return web.json_response(self.token_error)
            self.issued.append(f"tok{len(self.issued) + 1}")
            return web.json_response({"access_token": self.issued[-1], "expires_in": self.expires_in})
        assert request.path == "/cgi-bin/message/template/send"
        token = request.query["access_token"]
        self.sent.append((token, request.json()))
        if token != self.issued[-1]:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        reply = (
            self.replies.popleft()
            if self.replies
            else {"errcode": 0, "errmsg": "ok", "msgid": 1000 + len(self.sent)}
        )
        return web.json_response(reply)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def wechat(
    http_sink: Callable[[Handler], Awaitable[HttpSink]],
) -> AsyncIterator[tuple[WeChatProvider, FakeWeChat, Clock]]:
    fake, clock = FakeWeChat(), Clock()
    sink = await http_sink(fake)
    config = WeChatConfig(appid="wx123", secret="wx-secret", api_base=sink.url)
    provider = WeChatProvider(config, options=HttpOptions(timeout_s=2), clock=clock)
    yield provider, fake, clock
    await provider.close()


def wechat_delivery(**overrides: Any):
    return delivery("wechat", address="openid-1", content=CONTENT, **overrides)


async def test_template_message_is_sent_with_token_and_data(wechat) -> None:
    provider, fake, _clock = wechat

    result = await provider.send(wechat_delivery())

    assert result.provider_message_id == "1001"
    [(token, payload)] = fake.sent
    assert token == "tok1"
    assert payload == {
        "touser": "openid-1",
        "template_id": "TM001",
        "url": "https://example.com/orders/7",
        "client_msg_id": "d-1:0",
        "data": {
            "first": {"value": "Hi Ann"},
            "keyword1": {"value": "123"},
            "remark": {"value": "bye", "color": "#173177"},
        },
    }


async def test_token_is_cached_across_sends(wechat) -> None:
    provider, fake, _clock = wechat

    for n in range(3):
        await provider.send(wechat_delivery(idempotency_key=f"d-{n}:0"))

    assert fake.issued == ["tok1"]
    assert [token for token, _ in fake.sent] == ["tok1"] * 3


async def test_token_is_fetched_again_shortly_before_expiry(wechat) -> None:
    provider, fake, clock = wechat
    await provider.send(wechat_delivery())

    clock.now += 7200 - 300 - 1  # still inside the margin: cached
    await provider.send(wechat_delivery())
    clock.now += 2  # within 300 s of expiry: replaced
    await provider.send(wechat_delivery())

    assert fake.issued == ["tok1", "tok2"]
    assert [token for token, _ in fake.sent] == ["tok1", "tok1", "tok2"]


async def test_expired_token_is_refreshed_once_and_the_send_succeeds(wechat) -> None:
    provider, fake, _clock = wechat
    fake.replies.append({"errcode": 42001, "errmsg": "access_token expired"})

    result = await provider.send(wechat_delivery())

    assert result.provider_message_id == "1002"
    assert fake.issued == ["tok1", "tok2"]
    assert [token for token, _ in fake.sent] == ["tok1", "tok2"]


async def test_token_rejected_twice_is_retryable(wechat) -> None:
    provider, fake, _clock = wechat
    fake.replies.extend([{"errcode": 40001}, {"errcode": 40001}])

    with pytest.raises(ProviderError) as caught:
        await provider.send(wechat_delivery())

    assert (caught.value.retryable, caught.value.code) == (True, "40001")
    assert len(fake.issued) == 2  # one refresh per attempt, no loop


async def test_concurrent_sends_fetch_one_token(wechat) -> None:
    provider, fake, _clock = wechat
    fake.token_delay_s = 0.05

    results = await asyncio.gather(
        *(provider.send(wechat_delivery(idempotency_key=f"k{n}")) for n in range(10))
    )

    assert len(results) == 10
    assert fake.issued == ["tok1"]
    assert provider.token_fetches == 1


async def test_token_invalidated_under_concurrency_is_refreshed_once(wechat) -> None:
    provider, fake, _clock = wechat
    await provider.send(wechat_delivery())
    fake.issued.append("tok-rotated")  # WeChat invalidated tok1 (e.g. another client fetched one)

    await asyncio.gather(*(provider.send(wechat_delivery(idempotency_key=f"k{n}")) for n in range(5)))

    assert fake.issued == ["tok1", "tok-rotated", "tok3"]


@pytest.mark.parametrize(
    ("errcode", "retryable"),
    [(43004, False), (40003, False), (40037, False), (-1, True), (45009, True)],
    ids=["unsubscribed", "invalid-openid", "invalid-template", "system-busy", "rate-limited"],
)
async def test_errcodes_are_classified(wechat, errcode: int, retryable: bool) -> None:
    provider, fake, _clock = wechat
    fake.replies.append({"errcode": errcode, "errmsg": "nope"})

    with pytest.raises(ProviderError) as caught:
        await provider.send(wechat_delivery())

    assert (caught.value.retryable, caught.value.code, caught.value.channel) == (
        retryable,
        str(errcode),
        "wechat",
    )
    assert "wx-secret" not in str(caught.value) and "tok1" not in str(caught.value)


async def test_bad_credentials_are_permanent(wechat) -> None:
    provider, fake, _clock = wechat
    fake.token_error = {"errcode": 40125, "errmsg": "invalid appsecret"}

    with pytest.raises(ProviderError) as caught:
        await provider.send(wechat_delivery())

    assert (caught.value.retryable, caught.value.code) == (False, "40125")
    assert fake.sent == []


async def test_missing_template_id_is_permanent_without_a_request(wechat) -> None:
    provider, fake, _clock = wechat

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery("wechat", address="openid-1", content=Content(text="hi")))

    assert (caught.value.retryable, caught.value.code) == (False, "no_template_id")
    assert fake.issued == []


async def test_secret_and_tokens_stay_out_of_logs(wechat, caplog: pytest.LogCaptureFixture) -> None:
    """Every logger at DEBUG across real request cycles (token fetch, send, token rejected →
    fetched again → sent again, a failed send whose error is logged as the sender pool logs it):
    neither the app secret nor an access token reaches the logs."""
    provider, fake, _clock = wechat
    fake.replies.append({"errcode": 40001, "errmsg": "invalid credential"})  # rejects tok1 once

    with caplog.at_level(logging.DEBUG):  # the root logger: aiohttp, asyncio and ours
        assert (await provider.send(wechat_delivery())).provider_message_id
        fake.replies.append({"errcode": 45009, "errmsg": "api freq out of limit"})
        with pytest.raises(ProviderError) as caught:
            await provider.send(wechat_delivery())
        logging.getLogger("smart_dispatch.dispatch.pool").warning("dispatch d-1 failed: %s", caught.value)

    assert fake.issued == ["tok1", "tok2"] and len(fake.sent) == 3
    assert "errcode 45009" in caplog.text  # the capture works
    for secret in ("wx-secret", "tok1", "tok2"):
        assert secret not in caplog.text
