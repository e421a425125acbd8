"""`HttpProvider.request` against loopback servers: pooling, the per-attempt bound, the body cap,
redirects, and how transport failures are classified (module docstring of http_common).

Replies that no well-behaved server sends (a bad status line, a body that does not inflate, an
endless body) come from `raw`, a bare asyncio server writing exactly the bytes given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from smart_dispatch.channels.base import ProviderError
from smart_dispatch.channels.http_common import MAX_BODY_BYTES, HttpOptions, HttpProvider
from smart_dispatch.channels.sms_http import SmsGatewayConfig, SmsGatewayProvider

from tests.channels.helpers import Handler, HttpSink, Received, closed_port_url

Conversation = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
StartRaw = Callable[[Conversation], Awaitable[str]]


@pytest.fixture
async def provider() -> AsyncIterator[HttpProvider]:
    built = SmsGatewayProvider(SmsGatewayConfig(url="unused"), options=HttpOptions(timeout_s=0.5))
    yield built
    await built.close()


@pytest.fixture
async def raw(release: asyncio.Event) -> AsyncIterator[StartRaw]:
    """`await raw(conversation)`: the base URL of a server running `conversation` per connection."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(conversation: Conversation) -> str:
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):  # hung up
                await conversation(reader, writer)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(connected, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    release.set()
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


def replying(payload: bytes) -> Conversation:
    """Reads one request head, writes `payload`, closes."""

    async def conversation(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(payload)

    return conversation


async def request_error(provider: HttpProvider, url: str, **kwargs: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await provider.request("GET", url, **kwargs)
    return caught.value


async def test_connections_are_kept_alive_and_reused(provider: HttpProvider, raw: StartRaw) -> None:
    connections = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while head := await reader.readuntil(b"\r\n\r\n"):
            assert b"user-agent: smart-dispatch\r\n" in head.lower()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    url = await raw(keep_alive)
    for _ in range(3):
        reply = await provider.request("GET", f"{url}/ping")
        assert (reply.status, reply.body) == (200, b"ok")

    assert connections == 1


async def test_redirects_are_not_followed_and_are_permanent(
    provider: HttpProvider, http_sink: Callable[[Handler], Awaitable[HttpSink]]
) -> None:
    async def moved(_request: Received) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    sink = await http_sink(moved)
    reply = await provider.request("POST", f"{sink.url}/sms", content=b"{}")

    assert reply.status == 302 and [r.path for r in sink.requests] == ["/sms"]
    with pytest.raises(ProviderError) as caught:
        provider.check(reply)
    assert (caught.value.retryable, caught.value.code) == (False, "302")


async def test_reply_headers_are_case_insensitive(
    provider: HttpProvider, http_sink: Callable[[Handler], Awaitable[HttpSink]]
) -> None:
    async def busy(_request: Received) -> web.StreamResponse:
        return web.Response(status=503, headers={"retry-after": "3"})

    sink = await http_sink(busy)
    reply = await provider.request("GET", sink.url)

    assert reply.headers["Retry-After"] == reply.headers["RETRY-AFTER"] == "3"
    with pytest.raises(ProviderError) as caught:
        provider.check(reply)
    assert (caught.value.retryable, caught.value.retry_after_s) == (True, 3.0)


async def test_an_endless_body_is_read_up_to_the_cap(
    provider: HttpProvider, raw: StartRaw, release: asyncio.Event
) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while not release.is_set():  # until the client hangs up (ConnectionError) or teardown
            writer.write(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
            await writer.drain()

    reply = await provider.request("GET", await raw(endless))

    assert (reply.status, len(reply.body)) == (200, MAX_BODY_BYTES)


async def test_the_bound_covers_a_body_that_stalls(
    provider: HttpProvider, raw: StartRaw, release: asyncio.Event
) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await writer.drain()
        await release.wait()

    loop = asyncio.get_running_loop()
    started = loop.time()
    error = await request_error(provider, await raw(stall))

    assert (error.retryable, error.code) == (True, "timeout")
    assert isinstance(error.__cause__, TimeoutError)
    assert 0.4 < loop.time() - started < 1.0  # timeout_s=0.5


async def test_a_body_that_does_not_inflate_is_a_retryable_protocol_error(
    provider: HttpProvider, raw: StartRaw
) -> None:
    garbage = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\n0123456789"

    error = await request_error(provider, await raw(replying(garbage)))

    assert (error.retryable, error.code) == (True, "protocol")
    assert isinstance(error.__cause__, aiohttp.ClientPayloadError)


@pytest.mark.parametrize(
    "payload",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",  # closed mid-body
        b"no status line\r\n\r\n",
        b"",  # closed without a reply
    ],
    ids=["truncated-body", "bad-status-line", "no-reply"],
)
async def test_broken_replies_are_retryable_connection_errors_without_the_query(
    provider: HttpProvider, raw: StartRaw, payload: bytes
) -> None:
    url = await raw(replying(payload))

    error = await request_error(provider, f"{url}/x?key=in-url", params={"secret": "s3cr3t"})

    assert (error.retryable, error.code) == (True, "connection")
    assert isinstance(error.__cause__, aiohttp.ClientError)
    assert "s3cr3t" not in str(error) and "in-url" not in str(error)


async def test_refused_connection_is_retryable(provider: HttpProvider) -> None:
    error = await request_error(provider, closed_port_url())

    assert (error.retryable, error.code) == (True, "connection")
    assert isinstance(error.__cause__, aiohttp.ClientConnectionError)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x?secret=s3cr3t",
        "mailto:a@example.com?secret=s3cr3t",
        "not a url?secret=s3cr3t",
        "example.com/x?secret=s3cr3t",
        "http:///x?secret=s3cr3t",
        "http://[::1/x?secret=s3cr3t",
        "http://example.com:99999/x?secret=s3cr3t",
        "",
    ],
)
async def test_malformed_or_non_http_urls_are_permanent(provider: HttpProvider, url: str) -> None:
    error = await request_error(provider, url)

    assert (error.retryable, error.code) == (False, "invalid_url")
    assert error.__cause__ is not None
    assert "s3cr3t" not in str(error)


@pytest.mark.parametrize(
    ("userinfo", "headers"),
    [
        ("user:pw@", {"Authorization": "Bearer t"}),  # credentials twice
        ("", {"X-Note": "a\r\nInjected: yes"}),  # a line break in a header value
    ],
    ids=["url-credentials-and-authorization", "header-line-break"],
)
async def test_requests_the_client_refuses_to_build_are_permanent(
    provider: HttpProvider,
    http_sink: Callable[[Handler], Awaitable[HttpSink]],
    userinfo: str,
    headers: dict[str, str],
) -> None:
    async def accept(_request: Received) -> web.StreamResponse:
        return web.Response()

    sink = await http_sink(accept)

    error = await request_error(provider, sink.url.replace("http://", f"http://{userinfo}"), headers=headers)

    assert (error.retryable, error.code) == (False, "invalid_request")
    assert isinstance(error.__cause__, ValueError)
    assert sink.requests == []


def test_providers_can_be_built_outside_the_event_loop() -> None:
    """The registry builds providers before the loop runs: the session is made on first use."""
    built = SmsGatewayProvider(SmsGatewayConfig(url="http://127.0.0.1:9/sms"))

    async def use() -> None:
        try:
            error = await request_error(built, "ftp://example.com/")
            assert error.code == "invalid_url"
        finally:
            await built.close()
            await built.close()  # idempotent

    asyncio.run(use())
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(built.request("GET", "http://127.0.0.1:9/"))


async def test_environment_proxies_are_used_unless_no_proxy_exempts_the_host(
    raw: StartRaw,
    http_sink: Callable[[Handler], Awaitable[HttpSink]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    heads: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nvia proxy")

    async def direct(_request: Received) -> web.StreamResponse:
        return web.Response(text="direct")

    proxy_url, sink = await raw(proxy), await http_sink(direct)
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    built = SmsGatewayProvider(SmsGatewayConfig(url="unused"), options=HttpOptions(timeout_s=2))
    try:
        proxied = await built.request("POST", "http://sms-gateway.example/v1/send", content=b"{}")
        exempt = await built.request("POST", f"{sink.url}/sms", content=b"{}")
    finally:
        await built.close()

    assert proxied.body == b"via proxy"
    assert [head.split(b"\r\n")[0] for head in heads] == [b"POST http://sms-gateway.example/v1/send HTTP/1.1"]
    assert exempt.body == b"direct" and [r.path for r in sink.requests] == ["/sms"]
