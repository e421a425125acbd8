"""The Apprise provider against a local HTTP server playing one Apprise target (its `json://`
service: a JSON POST), and a custom channel (`ops_chat`) from the providers file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from smart_dispatch.channels.base import Content, ProviderError
from smart_dispatch.channels.chat_apprise import AppriseConfig, AppriseProvider
from smart_dispatch.channels.registry import ProviderConfigError, custom_channels, providers_from_config
from smart_dispatch.inbox.memory import MemoryInboxStore

from tests.channels.helpers import Handler, HttpSink, Received, delivery

ALERT = Content(title="disk full", text="db-1: /var at 97 %")
Make = Callable[..., Awaitable[tuple[AppriseProvider, HttpSink]]]


@pytest.fixture
async def chat(http_sink: Callable[[Handler], Awaitable[HttpSink]]) -> AsyncIterator[Make]:
    providers: list[AppriseProvider] = []

    async def make(handler: Handler, *, timeout_s: float = 5.0) -> tuple[AppriseProvider, HttpSink]:
        sink = await http_sink(handler)
        url = sink.url.replace("http://", "json://") + "/hooks/ops"
        provider = AppriseProvider(AppriseConfig(url, timeout_s=timeout_s), channel="ops_chat", name="ops")
        providers.append(provider)
        return provider, sink

    yield make
    for provider in providers:
        await provider.close()


def status(code: int) -> Handler:
    async def handle(_request: Received) -> web.StreamResponse:
        return web.json_response({}, status=code, headers={"Retry-After": "30"})

    return handle


async def test_the_message_arrives_at_the_target(chat: Make) -> None:
    provider, sink = await chat(status(200))

    result = await provider.send(delivery("ops_chat", address="ops", content=ALERT))

    assert (result.provider, result.provider_message_id) == ("ops", "")
    [request] = sink.requests
    assert (request.method, request.path) == ("POST", "/hooks/ops")
    body = request.json()
    assert (body["title"], body["message"], body["type"]) == ("disk full", "db-1: /var at 97 %", "info")


@pytest.mark.parametrize("code", [400, 429, 500, 503])
async def test_a_failing_target_is_retryable_without_a_hint(chat: Make, code: int) -> None:
    # Apprise says only that the service failed: a 400 cannot be told from a 503, and a 429's
    # Retry-After does not come through.
    provider, _sink = await chat(status(code))

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery("ops_chat", address="ops", content=ALERT))

    assert (caught.value.code, caught.value.retryable, caught.value.retry_after_s) == (
        "apprise_failed",
        True,
        None,
    )


async def test_a_silent_target_is_a_retryable_timeout_that_does_not_block_the_loop(
    chat: Make, release: asyncio.Event
) -> None:
    async def silent(_request: Received) -> web.StreamResponse:
        await release.wait()
        return web.json_response({})

    provider, _sink = await chat(silent, timeout_s=0.5)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.ensure_future(tick())
    started = time.monotonic()
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.send(delivery("ops_chat", address="ops", content=ALERT))
    finally:
        ticker.cancel()
    assert (caught.value.code, caught.value.retryable) == ("timeout", True)
    assert time.monotonic() - started < 2.0
    assert ticks >= 20  # the loop kept running while Apprise's thread waited


def test_urls_apprise_does_not_take_are_a_config_error_without_the_url() -> None:
    config = {"ops_chat": {"type": "apprise", "url_env": "OPS"}}
    with pytest.raises(ProviderConfigError) as caught:
        providers_from_config(config, {"OPS": "nope://secret-token-1"}, MemoryInboxStore())

    assert (caught.value.channel, caught.value.key) == ("ops_chat", "url_env")
    assert "1 of its 1 URL" in caught.value.problem and "secret-token-1" not in str(caught.value)


async def test_a_custom_channel_needs_a_type_that_serves_any_channel() -> None:
    env = {"OPS": "json://127.0.0.1:9/x"}
    good = {"ops_chat": {"type": "apprise", "url_env": "OPS"}, "sms": {"type": "stub"}}
    assert custom_channels(good) == ("ops_chat",)
    providers = providers_from_config(good, env, MemoryInboxStore())
    assert providers["ops_chat"].channel == "ops_chat"

    for config, where, key, words in [
        ({"ops_chat": {"type": "smtp"}}, "ops_chat", "type", "type smtp serves only those"),
        ({"Ops-Chat": {"type": "apprise"}}, "Ops-Chat", "", "a custom channel's name is a-z"),
        (
            {"ops_chat": [{"type": "apprise", "url_env": "OPS"}, {"type": "fcm"}]},
            "ops_chat[1]",
            "type",
            "fcm",
        ),
    ]:
        with pytest.raises(ProviderConfigError) as caught:
            custom_channels(config, file="providers.yaml")
        assert (caught.value.file, caught.value.channel, caught.value.key) == ("providers.yaml", where, key)
        assert words in caught.value.problem
