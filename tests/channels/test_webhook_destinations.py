"""The webhook provider's destination policy against loopback receivers: loopback is allowed by
default, so denial is proven with `deny_private` / `deny_networks`, the resolver path with
``localhost`` (a name that resolves to loopback), exceptions with `allow_networks`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from smart_dispatch.channels.base import Content, ProviderError
from smart_dispatch.channels.destinations import DestinationPolicy, ForbiddenDestination
from smart_dispatch.channels.http_common import HttpOptions
from smart_dispatch.channels.webhook import WebhookConfig, WebhookProvider

from tests.channels.helpers import Handler, HttpSink, Received, delivery

SECRET = "whsec-test"
CONTENT = Content(text="hello", fields={"n": 1})
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")
Sinks = Callable[[Handler], Awaitable[HttpSink]]


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Direct connections unless a test sets a proxy (providers read the environment when built)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
async def build() -> AsyncIterator[Callable[[DestinationPolicy], WebhookProvider]]:
    """`build(policy)`: a webhook provider with that policy, closed after the test."""
    built: list[WebhookProvider] = []

    def make(policy: DestinationPolicy) -> WebhookProvider:
        provider = WebhookProvider(WebhookConfig(SECRET, policy), options=HttpOptions(timeout_s=2))
        built.append(provider)
        return provider

    yield make
    for provider in built:
        await provider.close()


async def received(_request: Received) -> web.StreamResponse:
    return web.json_response({"id": "rcv-1"})


async def refused(provider: WebhookProvider, address: str) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery("webhook", address=address, content=CONTENT))
    return caught.value


def port_of(sink: HttpSink) -> str:
    return sink.url.rsplit(":", 1)[1]


async def test_loopback_receivers_are_allowed_by_default(build, http_sink: Sinks) -> None:
    sink = await http_sink(received)
    provider = build(DestinationPolicy())

    by_ip = await provider.send(delivery("webhook", address=f"{sink.url}/a", content=CONTENT))
    by_name = await provider.send(
        delivery("webhook", address=f"http://localhost:{port_of(sink)}/b", content=CONTENT)
    )

    assert by_ip.provider_message_id == by_name.provider_message_id == "rcv-1"
    assert [r.path for r in sink.requests] == ["/a", "/b"]


async def test_a_denied_ip_literal_is_refused_before_any_request(build, http_sink: Sinks) -> None:
    sink = await http_sink(received)
    provider = build(DestinationPolicy.build(deny_networks=["127.0.0.0/8"]))

    error = await refused(provider, f"{sink.url}/hook?token=s3cr3t")

    assert (error.retryable, error.code, error.provider) == (False, "forbidden_destination", "webhook")
    assert "127.0.0.1 is in denied network 127.0.0.0/8 (deny_networks)" in str(error)
    assert "s3cr3t" not in str(error) and "/hook" not in str(error)
    assert sink.requests == []


async def test_a_name_resolving_to_a_denied_address_is_refused_by_the_resolver(
    build, http_sink: Sinks
) -> None:
    sink = await http_sink(received)
    provider = build(DestinationPolicy.build(deny_private=True))

    error = await refused(provider, f"http://localhost:{port_of(sink)}/hook?token=s3cr3t")

    assert (error.retryable, error.code) == (False, "forbidden_destination")
    assert "localhost resolves only to denied addresses" in str(error)
    assert "loopback, deny_private" in str(error) and "s3cr3t" not in str(error)
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, ForbiddenDestination):
        cause = cause.__cause__
    assert cause is not None  # refused inside the connection pool, by the resolver
    assert sink.requests == []


async def test_ipv4_mapped_literals_are_judged_as_the_ipv4_address(build, http_sink: Sinks) -> None:
    sink = await http_sink(received)
    provider = build(DestinationPolicy.build(deny_private=True))

    error = await refused(provider, f"http://[::ffff:127.0.0.1]:{port_of(sink)}/hook")

    assert error.code == "forbidden_destination" and "(127.0.0.1) is in denied network" in str(error)
    assert sink.requests == []


async def test_the_metadata_endpoint_is_denied_by_default_without_a_connection(build) -> None:
    provider = build(DestinationPolicy())
    loop = asyncio.get_running_loop()
    started = loop.time()

    errors = [
        await refused(provider, "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
        await refused(provider, "http://[fd00:ec2::254]/latest/meta-data/"),
        await refused(provider, "http://0.0.0.0:8080/admin"),
    ]

    assert [e.code for e in errors] == ["forbidden_destination"] * 3
    assert "169.254.0.0/16 (IPv4 link-local, denied by default)" in str(errors[0])
    assert loop.time() - started < 1.0  # refused, not timed out connecting


async def test_allow_networks_override_deny_private(build, http_sink: Sinks) -> None:
    sink = await http_sink(received)
    provider = build(DestinationPolicy.build(deny_private=True, allow_networks=["127.0.0.1/32"]))

    by_name = await provider.send(
        delivery("webhook", address=f"http://localhost:{port_of(sink)}/by-name", content=CONTENT)
    )
    by_ip = await provider.send(delivery("webhook", address=f"{sink.url}/by-ip", content=CONTENT))
    other = await refused(provider, f"http://127.0.0.2:{port_of(sink)}/other")

    assert by_name.provider_message_id == by_ip.provider_message_id == "rcv-1"
    assert [r.path for r in sink.requests] == ["/by-name", "/by-ip"]
    assert other.code == "forbidden_destination"


# --- through a proxy -------------------------------------------------------------------------


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A forward proxy on loopback answering every request itself: (port, request heads seen)."""
    heads: list[bytes] = []

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            body = b'{"id":"prx"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    yield str(server.sockets[0].getsockname()[1]), heads
    server.close()
    await server.wait_closed()


async def test_through_a_proxy_the_target_is_checked_here_and_the_proxy_is_trusted(
    build, http_sink: Sinks, proxy: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a proxy named `localhost` (a denied address under deny_private, but trusted as the proxy)
    sink = await http_sink(received)
    proxy_port, heads = proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://localhost:{proxy_port}")
    provider = build(DestinationPolicy.build(deny_private=True))

    # When targets are sent through it
    by_name = await refused(provider, f"http://localhost:{port_of(sink)}/hook?token=s3cr3t")
    by_ip = await refused(provider, f"{sink.url}/hook")
    allowed = await provider.send(delivery("webhook", address="http://[2001:db8::1]/hook", content=CONTENT))

    # Then denied targets never reach the proxy; an allowed one goes through it
    assert (by_name.code, by_name.retryable) == ("forbidden_destination", False)
    assert "checked before the proxy" in str(by_name) and "s3cr3t" not in str(by_name)
    assert by_ip.code == "forbidden_destination"
    assert allowed.provider_message_id == "prx"
    assert [head.split(b"\r\n")[0] for head in heads] == [b"POST http://[2001:db8::1]/hook HTTP/1.1"]
    assert sink.requests == []
