"""The FCM-shaped push provider against a loopback server playing FCM HTTP v1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from smart_dispatch.channels.base import Content, ProviderError
from smart_dispatch.channels.http_common import HttpOptions
from smart_dispatch.channels.push_fcm import FcmConfig, FcmProvider

from tests.channels.helpers import Handler, HttpSink, Received, delivery

Push = tuple[FcmProvider, HttpSink]
CONTENT = Content(title="Your sign-in code", text="Your code is 123", fields={"code": "123", "n": 2})


def fcm_error(status: int, name: str, error_code: str | None = None) -> dict[str, Any]:
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]
    return {
        "error": {
            "code": status,
            "message": f"{name} happened",
            "status": name,
            "details": details if error_code else [],
        }
    }


def answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Handler:
    async def handle(_request: Received) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return handle


@pytest.fixture
async def push(
    http_sink: Callable[[Handler], Awaitable[HttpSink]],
) -> AsyncIterator[Callable[[Handler], Awaitable[Push]]]:
    providers: list[FcmProvider] = []

    async def make(handler: Handler) -> Push:
        sink = await http_sink(handler)
        config = FcmConfig(project="my-project", token="fcm-token", api_base=sink.url)
        providers.append(FcmProvider(config, options=HttpOptions(timeout_s=2)))
        return providers[-1], sink

    yield make
    for provider in providers:
        await provider.close()


async def test_notification_is_sent_in_the_fcm_v1_shape(push) -> None:
    provider, sink = await push(answer(200, {"name": "projects/my-project/messages/0:1234"}))

    result = await provider.send(delivery("push", address="device-token-1", content=CONTENT))

    assert (result.provider, result.provider_message_id) == ("fcm", "projects/my-project/messages/0:1234")
    [request] = sink.requests
    assert request.path == "/v1/projects/my-project/messages:send"
    assert request.headers["Authorization"] == "Bearer fcm-token"
    assert request.headers["Idempotency-Key"] == "d-1:0"
    assert request.json() == {
        "message": {
            "token": "device-token-1",
            "notification": {"title": "Your sign-in code", "body": "Your code is 123"},
            "data": {"code": "123", "n": "2", "sd_message_id": "m-1", "sd_dispatch_id": "d-1"},
        }
    }


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (404, fcm_error(404, "NOT_FOUND", "UNREGISTERED"), "UNREGISTERED"),
        (400, fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"), "INVALID_ARGUMENT"),
        (403, fcm_error(403, "PERMISSION_DENIED"), "PERMISSION_DENIED"),
    ],
    ids=["unregistered", "invalid-argument", "sender-mismatch"],
)
async def test_client_errors_are_permanent(push, status: int, body: dict[str, Any], code: str) -> None:
    provider, _sink = await push(answer(status, body))

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery("push", address="gone-token", content=CONTENT))

    assert (caught.value.retryable, caught.value.code, caught.value.retry_after_s) == (False, code, None)


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (503, fcm_error(503, "UNAVAILABLE", "UNAVAILABLE"), "UNAVAILABLE"),
        (429, fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), "QUOTA_EXCEEDED"),
    ],
    ids=["unavailable", "quota-exceeded"],
)
async def test_overload_is_retryable_with_retry_after(
    push, status: int, body: dict[str, Any], code: str
) -> None:
    provider, _sink = await push(answer(status, body, {"Retry-After": "12"}))

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery("push", address="t", content=CONTENT))

    assert (caught.value.retryable, caught.value.code, caught.value.retry_after_s) == (True, code, 12.0)


async def test_internal_error_without_json_is_retryable(push) -> None:
    async def html_error(_request: Received) -> web.StreamResponse:
        return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")

    provider, _sink = await push(html_error)

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery("push", address="t", content=CONTENT))

    assert (caught.value.retryable, caught.value.code) == (True, "502")
