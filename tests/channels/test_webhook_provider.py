"""The webhook provider against a loopback receiver that verifies signatures with `verify`."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from smart_dispatch.channels.base import Content, ProviderError
from smart_dispatch.channels.http_common import HttpOptions
from smart_dispatch.channels.webhook import WebhookConfig, WebhookProvider, sign, verify

from tests.channels.helpers import Handler, HttpSink, Received, closed_port_url, delivery

SECRET = "whsec-test"
CONTENT = Content(
    text="Your code is 123", fields={"code": "123", "amount": 4.5, "tags": ["a", "b"], "note": "héllo"}
)


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookProvider]:
    provider = WebhookProvider(WebhookConfig(secret=SECRET), options=HttpOptions(timeout_s=2))
    yield provider
    await provider.close()


async def verifying_receiver(request: Received) -> web.StreamResponse:
    """A receiver as a user would write one: verify, then accept."""
    timestamp = request.headers.get("X-SmartDispatch-Timestamp", "")
    signature = request.headers.get("X-SmartDispatch-Signature", "")
    if not verify(SECRET, timestamp, request.body, signature):
        return web.json_response({"error": "bad signature"}, status=401)
    return web.json_response({"id": "rcv-1"})


async def test_signed_payload_is_accepted_by_a_verifying_receiver(
    webhook: WebhookProvider, http_sink: Callable[[Handler], Awaitable[HttpSink]]
) -> None:
    sink = await http_sink(verifying_receiver)

    result = await webhook.send(delivery("webhook", address=f"{sink.url}/hooks/sd", content=CONTENT))

    assert (result.provider, result.provider_message_id) == ("webhook", "rcv-1")
    [request] = sink.requests
    assert request.path == "/hooks/sd"
    assert request.headers["Idempotency-Key"] == "d-1:0"
    assert request.headers["X-SmartDispatch-Signature"].startswith("sha256=")
    assert abs(int(request.headers["X-SmartDispatch-Timestamp"]) - time.time()) < 5
    assert request.json() == {
        "message_id": "m-1",
        "dispatch_id": "d-1",
        "user_id": "u-1",
        "channel": "webhook",
        "text": "Your code is 123",
        "data": {"code": "123", "amount": 4.5, "tags": ["a", "b"], "note": "héllo"},
    }


async def test_receiver_rejecting_the_signature_is_a_permanent_failure(
    http_sink: Callable[[Handler], Awaitable[HttpSink]],
) -> None:
    sink = await http_sink(verifying_receiver)
    provider = WebhookProvider(WebhookConfig(secret="wrong-secret"))
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.send(delivery("webhook", address=sink.url, content=CONTENT))
    finally:
        await provider.close()

    assert (caught.value.retryable, caught.value.code) == (False, "401")


async def test_receiver_error_is_retryable(webhook: WebhookProvider, http_sink) -> None:
    async def broken(_request: Received) -> web.StreamResponse:
        return web.Response(status=500, text="oops")

    sink = await http_sink(broken)

    with pytest.raises(ProviderError) as caught:
        await webhook.send(delivery("webhook", address=sink.url, content=CONTENT))

    assert (caught.value.retryable, caught.value.code) == (True, "500")


async def test_receiver_down_is_retryable(webhook: WebhookProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await webhook.send(delivery("webhook", address=closed_port_url("/hook"), content=CONTENT))

    assert (caught.value.retryable, caught.value.code) == (True, "connection")


@pytest.mark.parametrize("address", ["", "not a url", "ftp://example.com/x", "mailto:a@example.com"])
async def test_address_that_is_not_an_http_url_is_permanent(webhook: WebhookProvider, address: str) -> None:
    with pytest.raises(ProviderError) as caught:
        await webhook.send(delivery("webhook", address=address, content=CONTENT))

    assert (caught.value.retryable, caught.value.code) == (False, "invalid_address")


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = "sha256=" + hmac.new(b"k", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()

    assert sign("k", 1700000000, b'{"a":1}') == expected
    assert sign(b"k", "1700000000", '{"a":1}') == expected


def test_verify_rejects_tampering_stale_timestamps_and_garbage() -> None:
    body, now = b'{"message_id":"m-1"}', 1_700_000_000
    good = sign(SECRET, now, body)

    assert verify(SECRET, str(now), body, good, now_s=now + 10)
    assert not verify(SECRET, str(now), body + b" ", good, now_s=now)  # body changed
    assert not verify("other", str(now), body, good, now_s=now)  # wrong secret
    assert not verify(SECRET, str(now + 1), body, good, now_s=now)  # timestamp changed
    assert not verify(SECRET, str(now), body, good, now_s=now + 301)  # replayed too late
    assert verify(SECRET, str(now), body, good, now_s=now + 3600, tolerance_s=3600)
    assert not verify(SECRET, "yesterday", body, good, now_s=now)
    assert not verify(SECRET, str(now), body, "sha256=00", now_s=now)
