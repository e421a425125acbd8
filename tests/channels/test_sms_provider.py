"""The SMS gateway provider against an HTTP server on loopback playing the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web
from smart_dispatch.channels.base import ProviderError
from smart_dispatch.channels.http_common import HttpOptions
from smart_dispatch.channels.sms_http import SmsGatewayConfig, SmsGatewayProvider

from tests.channels.helpers import Handler, HttpSink, Received, closed_port_url, delivery

StartSink = Callable[[Handler], Awaitable[HttpSink]]
Gateway = tuple[SmsGatewayProvider, HttpSink]


@pytest.fixture
async def gateway(http_sink: StartSink) -> AsyncIterator[Callable[[Handler], Awaitable[Gateway]]]:
    """`await gateway(handler)`: a sink answering with `handler` and a provider sending to it."""
    providers: list[SmsGatewayProvider] = []

    async def make(handler: Handler) -> Gateway:
        sink = await http_sink(handler)
        provider = SmsGatewayProvider(
            SmsGatewayConfig(url=f"{sink.url}/sms", token="s3cret"), options=HttpOptions(timeout_s=0.5)
        )
        providers.append(provider)
        return provider, sink

    yield make
    for provider in providers:
        await provider.close()


def answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> Handler:
    async def handle(_request: Received) -> web.StreamResponse:
        return web.json_response(body or {}, status=status, headers=headers)

    return handle


async def test_accepted_message_carries_text_reference_token_and_idempotency_key(gateway) -> None:
    provider, sink = await gateway(answer(200, {"id": "gw-42", "status": "queued"}))

    result = await provider.send(delivery(address="+15550100"))

    assert result.provider == "http_sms"
    assert result.provider_message_id == "gw-42"
    [request] = sink.requests
    assert (request.method, request.path) == ("POST", "/sms")
    assert request.json() == {"to": "+15550100", "text": "Your code is 123", "reference": "m-1"}
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.headers["Idempotency-Key"] == "d-1:0"
    assert request.headers["Content-Type"] == "application/json"


async def test_accepted_without_id_has_empty_provider_message_id(gateway) -> None:
    provider, _sink = await gateway(answer(202, {"queued": True}))
    assert (await provider.send(delivery())).provider_message_id == ""


async def test_invalid_number_is_permanent(gateway) -> None:
    provider, _sink = await gateway(answer(400, {"error": "invalid number"}))

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery(address="+1"))

    error = caught.value
    assert (error.retryable, error.code, error.provider, error.channel) == (False, "400", "http_sms", "sms")
    assert "invalid number" in str(error)


async def test_rate_limit_is_retryable_with_retry_after_seconds(gateway) -> None:
    provider, _sink = await gateway(answer(429, {"error": "slow down"}, {"Retry-After": "7"}))

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery())

    assert (caught.value.retryable, caught.value.code, caught.value.retry_after_s) == (True, "429", 7.0)


async def test_rate_limit_retry_after_as_http_date(gateway) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    provider, _sink = await gateway(answer(429, headers={"Retry-After": when}))

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery())

    assert caught.value.retryable
    assert caught.value.retry_after_s is not None and 25 <= caught.value.retry_after_s <= 30


async def test_server_error_is_retryable(gateway) -> None:
    provider, _sink = await gateway(answer(500, {"error": "boom"}))

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery())

    assert (caught.value.retryable, caught.value.code, caught.value.retry_after_s) == (True, "500", None)


async def test_slow_gateway_times_out_retryably(gateway, release: asyncio.Event) -> None:
    async def slow(_request: Received) -> web.StreamResponse:
        await release.wait()
        return web.json_response({})

    provider, _sink = await gateway(slow)

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery())

    assert (caught.value.retryable, caught.value.code) == (True, "timeout")


async def test_gateway_down_is_retryable() -> None:
    provider = SmsGatewayProvider(
        SmsGatewayConfig(url=closed_port_url("/sms")), options=HttpOptions(timeout_s=1)
    )
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.send(delivery())
    finally:
        await provider.close()

    assert (caught.value.retryable, caught.value.code) == (True, "connection")


async def test_empty_address_fails_permanently_without_a_request(gateway) -> None:
    provider, sink = await gateway(answer(200))

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery(address=" "))

    assert (caught.value.retryable, caught.value.code) == (False, "invalid_address")
    assert sink.requests == []
