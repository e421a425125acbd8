"""The webhook destination policy: pure verdicts, the policy resolver's filtering, and the aiohttp
behaviour the enforcement relies on (a loopback sink where a connection is made)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from smart_dispatch.channels.destinations import (
    DEFAULT_POLICY,
    DestinationPolicy,
    ForbiddenDestination,
    PolicyResolver,
    embedded_ipv4,
    parse_network,
    proxy_endpoints,
)

from tests.channels.helpers import Handler, HttpSink
from tests.support.sinks import accept

PRIVATE = DestinationPolicy.build(deny_private=True)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


class ScriptedResolver(AbstractResolver):
    """DNS as a script: the n-th lookup answers `answers[n]` (the last one repeats); records the
    hosts asked for. Stands in for a name server whose answers change (DNS rebinding)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        addresses = self.answers[min(len(self.asked), len(self.answers)) - 1]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        self.closed = True


class FailingResolver(AbstractResolver):
    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "fe80::1%eth0",
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",  # IPv4-mapped
        "::ffff:0.0.0.0",
        "64:ff9b::169.254.169.254",  # NAT64 well-known prefix
    ],
)
def test_defaults_deny_link_local_unspecified_and_metadata(address: str) -> None:
    assert DEFAULT_POLICY.refusal(ip(address)) is not None


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "10.1.2.3", "192.168.0.1", "100.64.0.1", "fd12::1", "8.8.8.8"]
)
def test_defaults_allow_everything_else(address: str) -> None:
    assert DEFAULT_POLICY.refusal(ip(address)) is None


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.255.0.9", "127.0.0.0/8"),
        ("::1", "::1/128"),
        ("10.1.2.3", "10.0.0.0/8"),
        ("172.16.0.1", "172.16.0.0/12"),
        ("172.31.255.255", "172.16.0.0/12"),
        ("192.168.1.1", "192.168.0.0/16"),
        ("100.64.0.1", "100.64.0.0/10"),
        ("100.127.255.255", "100.64.0.0/10"),
        ("fc00::1", "fc00::/7"),
        ("fd12:3456::1", "fc00::/7"),
        ("::ffff:127.0.0.1", "127.0.0.0/8"),
        ("::ffff:10.0.0.1", "10.0.0.0/8"),
        ("::ffff:192.168.0.1", "192.168.0.0/16"),
        ("::ffff:100.64.0.1", "100.64.0.0/10"),
        ("169.254.169.254", "169.254.0.0/16"),  # the defaults still apply
    ],
)
def test_deny_private_adds_loopback_rfc1918_cgnat_ula_and_their_mapped_forms(
    address: str, network: str
) -> None:
    refusal = PRIVATE.refusal(ip(address))

    assert refusal is not None and str(refusal.denied.network) == network


@pytest.mark.parametrize(
    "address", ["172.15.255.255", "172.32.0.1", "100.63.255.255", "100.128.0.1", "8.8.8.8", "2001:db8::1"]
)
def test_deny_private_stops_at_the_network_edges(address: str) -> None:
    assert PRIVATE.refusal(ip(address)) is None


def test_allow_wins_over_deny() -> None:
    policy = DestinationPolicy.build(
        deny_private=True,
        deny_networks=["203.0.113.0/24"],
        allow_networks=["10.1.0.0/16", "169.254.10.0/24", "203.0.113.7", "127.0.0.1/32"],
    )

    # An address in both an allow and a deny network is allowed, whatever denies it.
    assert policy.refusal(ip("10.1.2.3")) is None  # deny_private
    assert policy.refusal(ip("169.254.10.1")) is None  # a default
    assert policy.refusal(ip("203.0.113.7")) is None  # deny_networks
    assert policy.refusal(ip("::ffff:127.0.0.1")) is None  # the mapped form of an allowed one
    # Outside the exceptions the deny networks hold.
    assert policy.refusal(ip("10.2.0.1")) is not None
    assert policy.refusal(ip("169.254.169.254")) is not None
    assert policy.refusal(ip("203.0.113.8")) is not None
    assert policy.refusal(ip("127.0.0.2")) is not None


def test_an_allow_list_only_policy_denies_everything_else() -> None:
    policy = DestinationPolicy.build(
        deny_networks=["0.0.0.0/0", "::/0"], allow_networks=["198.51.100.0/24", "2001:db8::/32"]
    )

    assert policy.refusal(ip("198.51.100.20")) is None and policy.refusal(ip("2001:db8::5")) is None
    for address in ("8.8.8.8", "127.0.0.1", "2606:4700::1111", "::ffff:8.8.8.8"):
        assert policy.refusal(ip(address)) is not None


def test_listed_deny_networks_cover_mapped_forms_and_name_the_setting() -> None:
    policy = DestinationPolicy.build(deny_networks=["127.0.0.0/8"])

    refusal = policy.refusal(ip("::ffff:127.0.0.1"))

    assert str(refusal) == "::ffff:7f00:1 (127.0.0.1) is in denied network 127.0.0.0/8 (deny_networks)"
    assert policy.refusal(ip("::1")) is None  # only what was listed (and the defaults)


def test_refusals_name_the_address_network_and_reason() -> None:
    assert str(DEFAULT_POLICY.refusal(ip("169.254.169.254"))) == (
        "169.254.169.254 is in denied network 169.254.0.0/16 (IPv4 link-local, denied by default)"
    )
    assert str(PRIVATE.refusal(ip("fd00::5"))) == (
        "fd00::5 is in denied network fc00::/7 (IPv6 unique local, deny_private)"
    )


@pytest.mark.parametrize(
    ("address", "embedded"),
    [
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("2001:db8::1", None),
        ("10.0.0.1", None),
    ],
)
def test_embedded_ipv4(address: str, embedded: str | None) -> None:
    assert embedded_ipv4(ip(address)) == (None if embedded is None else ip(embedded))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("10.0.0.1/8", "host bits set; did you mean 10.0.0.0/8?"),
        ("10.0.0.0/33", "not an IP network"),
        ("internal", "not an IP network"),
        ("", "not an IP network"),
    ],
)
def test_parse_network_says_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_network(text)

    assert words in str(caught.value)


def test_parse_network_takes_bare_addresses_and_ipv6() -> None:
    assert parse_network(" 10.0.0.5 ") == ipaddress.ip_network("10.0.0.5/32")
    assert parse_network("fd00::/8") == ipaddress.ip_network("fd00::/8")


def test_proxy_endpoints_are_host_and_port_of_the_http_proxies() -> None:
    proxies = {"http": "http://Proxy.internal:3128", "https": "http://10.0.0.3", "no": "localhost"}

    assert proxy_endpoints(proxies) == {("proxy.internal", 3128), ("10.0.0.3", 80)}


async def test_resolver_drops_denied_addresses_and_refuses_when_none_is_left() -> None:
    inner = ScriptedResolver(["127.0.0.1", "10.0.0.7", "::1"], ["10.0.0.7"])
    resolver = PolicyResolver(DestinationPolicy.build(deny_networks=["10.0.0.0/8"]), inner=inner)

    first = await resolver.resolve("hooks.internal", 443)
    with pytest.raises(ForbiddenDestination) as caught:
        await resolver.resolve("hooks.internal", 443)
    await resolver.close()

    assert [answer["host"] for answer in first] == ["127.0.0.1", "::1"]
    assert caught.value.host == "hooks.internal"
    assert str(caught.value) == (
        "hooks.internal resolves only to denied addresses: "
        "10.0.0.7 is in denied network 10.0.0.0/8 (deny_networks)"
    )
    assert inner.closed


async def test_resolver_trusts_the_proxies_only() -> None:
    inner = ScriptedResolver(["10.0.0.3"])
    resolver = PolicyResolver(PRIVATE, inner=inner, trusted=[("proxy.internal", 3128)])

    assert [a["host"] for a in await resolver.resolve("proxy.internal", 3128)] == ["10.0.0.3"]
    with pytest.raises(ForbiddenDestination):
        await resolver.resolve("proxy.internal", 80)  # another port: not the proxy
    with pytest.raises(ForbiddenDestination):
        await resolver.resolve("other.internal", 3128)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://169.254.169.254/latest/meta-data?token=s3cr3t", "169.254.0.0/16"),
        ("https://[fd00:ec2::254]/", "fd00:ec2::254/128"),
        ("http://[::ffff:a9fe:a9fe]:8080/", "::ffff:a9fe:a9fe (169.254.169.254)"),
        ("http://[fe80::1%25eth0]/", "fe80::/10"),
        ("http://0.0.0.0:8080/", "0.0.0.0/8"),
        ("http://127.1/", "cannot be checked"),
        ("http://2130706433/", "cannot be checked"),
        ("http://0177.0.0.1/", "cannot be checked"),
        ("http://127.0.0.1./", "cannot be checked"),
    ],
)
async def test_check_url_refuses_denied_and_uncheckable_ip_literals_without_a_lookup(
    url: str, words: str
) -> None:
    inner = ScriptedResolver(["8.8.8.8"])
    resolver = PolicyResolver(DEFAULT_POLICY, inner=inner)

    with pytest.raises(ForbiddenDestination) as caught:
        await resolver.check_url(url, via_proxy=False)

    assert words in str(caught.value) and "s3cr3t" not in str(caught.value)
    assert inner.asked == []


async def test_check_url_leaves_names_to_the_resolver_unless_through_a_proxy() -> None:
    inner = ScriptedResolver(["8.8.8.8", "169.254.169.254"])
    resolver = PolicyResolver(DEFAULT_POLICY, inner=inner)

    await resolver.check_url("https://hooks.example/x", via_proxy=False)
    assert inner.asked == []  # the connection pool's lookup will enforce it

    # Through a proxy we cannot choose the address: one denied address refuses the name.
    with pytest.raises(ForbiddenDestination, match="checked before the proxy"):
        await resolver.check_url("https://hooks.example/x", via_proxy=True)
    assert inner.asked == ["hooks.example"]


async def test_check_url_through_a_proxy_leaves_names_it_cannot_resolve_to_the_proxy() -> None:
    resolver = PolicyResolver(PRIVATE, inner=FailingResolver())

    await resolver.check_url("https://only-the-proxy-knows.example/x", via_proxy=True)
    with pytest.raises(ForbiddenDestination):
        await resolver.check_url("http://[::1]:8080/x", via_proxy=True)  # literals are still checked


async def test_aiohttp_connects_to_ip_literals_without_asking_the_resolver(
    http_sink: Callable[[Handler], Awaitable[HttpSink]],
) -> None:
    """Why `check_url` exists: a resolver alone never sees IP-literal hosts."""
    sink = await http_sink(accept)
    inner = ScriptedResolver(["127.0.0.1"])
    refusing = PolicyResolver(DestinationPolicy.build(deny_networks=["127.0.0.0/8"]), inner=inner)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=refusing)) as session:
        async with session.get(f"{sink.url}/literal") as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get(sink.url.replace("127.0.0.1", "named.test"))

    assert inner.asked == ["named.test"]
    assert [request.path for request in sink.requests] == ["/literal"]
    assert isinstance(caught.value.__cause__, ForbiddenDestination)


async def test_the_resolver_decides_per_lookup_so_rebinding_cannot_reach_a_denied_address(
    http_sink: Callable[[Handler], Awaitable[HttpSink]],
) -> None:
    # Given a name that first answers an allowed address, then rebinds to a denied one
    sink = await http_sink(accept)
    port = sink.url.rsplit(":", 1)[1]
    inner = ScriptedResolver(["127.0.0.1"], ["169.254.169.254", "10.9.9.9"])
    policy = DestinationPolicy.build(deny_private=True, allow_networks=["127.0.0.1"])
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(policy, inner=inner), use_dns_cache=False)

    # When a client connects twice, without keeping the connection
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"http://rebind.test:{port}/first", headers={"Connection": "close"}) as r:
            assert r.status == 200
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get(f"http://rebind.test:{port}/second")

    # Then the second connection is refused before any connect
    assert inner.asked == ["rebind.test", "rebind.test"]
    assert [request.path for request in sink.requests] == ["/first"]
    assert "169.254.169.254 is in denied network" in str(caught.value.__cause__)
