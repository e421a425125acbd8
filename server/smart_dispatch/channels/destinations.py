"""Where the webhook provider may connect: a policy over IP addresses, enforced on the addresses
actually connected to.

A webhook's URL arrives with each message (the recipient's address), so without a policy a
calling service could make the sidecar POST to anything the sidecar can reach: the cloud metadata
endpoint (169.254.169.254, fd00:ec2::254), an admin port on loopback, a database on the private
network (server-side request forgery). Sidecars legitimately deliver to internal services, so
private networks are only denied when asked.

`DestinationPolicy`, decided per IP address:

    denied by default    0.0.0.0/8, ::/128 (unspecified: connecting to them reaches this host),
                         169.254.0.0/16, fe80::/10 (link-local: metadata endpoints live here),
                         fd00:ec2::254/128 (AWS instance metadata over IPv6)
    deny_private: true   also 127.0.0.0/8, ::1/128 (loopback), 10.0.0.0/8, 172.16.0.0/12,
                         192.168.0.0/16 (RFC 1918), 100.64.0.0/10 (CGNAT, RFC 6598),
                         fc00::/7 (IPv6 unique local)
    deny_networks        also the networks listed
    allow_networks       exceptions: an address inside one is allowed whichever deny network
                         (default, private or listed) also contains it — allow wins
    anything else        allowed

An IPv6 address that carries an IPv4 one — IPv4-mapped ``::ffff:a.b.c.d`` (a dual-stack socket
connects to the IPv4 address) or the NAT64 well-known prefix ``64:ff9b::a.b.c.d`` — is judged in
both forms: allowed when either form is in an allow network, else denied when either form is in
a deny network. So ``deny_private`` also denies ``::ffff:127.0.0.1``, and ``10.0.0.0/8`` in
`deny_networks` also ``::ffff:10.0.0.1``. For an allow-list only policy, deny everything and list
the exceptions: ``deny_networks: ["0.0.0.0/0", "::/0"]``, ``allow_networks: [...]``.

Enforcement (`PolicyResolver`, the resolver of the webhook provider's connection pool):

- Names: the resolver drops the denied addresses from every answer and raises
  `ForbiddenDestination` when none is left. aiohttp connects only to the addresses the resolver
  returned, so there is no check-then-connect gap: a name that answers differently on the next
  lookup (DNS rebinding) still cannot lead to a denied address.
- IP literals: aiohttp connects to them without calling the resolver, so `check_url` checks them
  before the request. A host that looks numeric but is not a canonical address (``127.1``,
  ``2130706433``, ``0177.0.0.1``) is refused: the socket layer would map it onto an address this
  module never saw.
- Through a proxy (``HTTP_PROXY`` / ``HTTPS_PROXY``) the proxy connects, not us. `check_url`
  resolves the target name here just before the request and refuses it when ANY of its
  addresses is denied (we cannot choose which one the proxy uses). Not covered: the proxy resolves
  the name again, so an answer that changes in between (DNS rebinding) or that differs in the
  proxy's view of DNS reaches whatever the proxy lets through; and a name that does not resolve
  here is left to the proxy. Enforce an egress policy at the proxy as well. The proxies
  themselves (host and port of the configured proxy URLs) are trusted: never checked.

Pure parts (`DestinationPolicy`, `parse_network`, `embedded_ipv4`) do no I/O.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from smart_dispatch.errors import SmartDispatchError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class DeniedNetwork:
    """A deny entry: the network and why it is denied (named in error messages)."""

    network: IPNetwork
    reason: str


def _denied(entries: Iterable[tuple[str, str]]) -> tuple[DeniedNetwork, ...]:
    return tuple(DeniedNetwork(ipaddress.ip_network(cidr), reason) for cidr, reason in entries)


DEFAULT_DENY = _denied(
    [
        ("0.0.0.0/8", "IPv4 unspecified, denied by default"),
        ("::/128", "IPv6 unspecified, denied by default"),
        ("169.254.0.0/16", "IPv4 link-local, denied by default"),
        ("fe80::/10", "IPv6 link-local, denied by default"),
        ("fd00:ec2::254/128", "AWS instance metadata over IPv6, denied by default"),
    ]
)
PRIVATE_DENY = _denied(
    [
        ("127.0.0.0/8", "IPv4 loopback, deny_private"),
        ("::1/128", "IPv6 loopback, deny_private"),
        ("10.0.0.0/8", "IPv4 private (RFC 1918), deny_private"),
        ("172.16.0.0/12", "IPv4 private (RFC 1918), deny_private"),
        ("192.168.0.0/16", "IPv4 private (RFC 1918), deny_private"),
        ("100.64.0.0/10", "IPv4 shared address space (CGNAT, RFC 6598), deny_private"),
        ("fc00::/7", "IPv6 unique local, deny_private"),
    ]
)


def parse_network(text: str) -> IPNetwork:
    """A network in CIDR notation (``10.0.0.0/8``, ``fd00::/8``; a bare address is a /32 or
    /128). Raises ValueError saying what is wrong, including host bits set (``10.0.0.1/8``)."""
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(
                f"{text!r} is not an IP network in CIDR notation (e.g. 10.0.0.0/8, fd00::/8)"
            ) from None
        raise ValueError(f"{text!r} has host bits set; did you mean {loose}?") from None


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches: IPv4-mapped (``::ffff:a.b.c.d``) or NAT64
    well-known prefix (``64:ff9b::a.b.c.d``); None otherwise. Pure."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why `address` is denied: it (or the IPv4 address it embeds) is in `denied.network`."""

    address: IPAddress
    denied: DeniedNetwork

    def __str__(self) -> str:
        embedded = embedded_ipv4(self.address)
        shown = f"{self.address} ({embedded})" if embedded is not None else str(self.address)
        return f"{shown} is in denied network {self.denied.network} ({self.denied.reason})"


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Which IP addresses the webhook provider may connect to (module docstring). The default
    instance denies only the default networks."""

    deny: tuple[DeniedNetwork, ...] = DEFAULT_DENY
    allow: tuple[IPNetwork, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        deny_networks: Iterable[str | IPNetwork] = (),
        allow_networks: Iterable[str | IPNetwork] = (),
        deny_private: bool = False,
    ) -> DestinationPolicy:
        """The defaults, plus the private networks when `deny_private`, plus `deny_networks`;
        `allow_networks` override all of them. Strings are parsed with `parse_network`
        (ValueError when malformed)."""

        def networks(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
            return tuple(parse_network(v) if isinstance(v, str) else v for v in values)

        listed = tuple(DeniedNetwork(network, "deny_networks") for network in networks(deny_networks))
        return cls(
            deny=DEFAULT_DENY + (PRIVATE_DENY if deny_private else ()) + listed,
            allow=networks(allow_networks),
        )

    def refusal(self, address: IPAddress) -> Refusal | None:
        """None when `address` may be connected to, else the deny entry refusing it. Pure."""
        embedded = embedded_ipv4(address)
        forms: tuple[IPAddress, ...] = (address,) if embedded is None else (address, embedded)
        if any(form in network for network in self.allow for form in forms):
            return None
        for denied in self.deny:
            if any(form in denied.network for form in forms):
                return Refusal(address, denied)
        return None


DEFAULT_POLICY = DestinationPolicy()
"""Only the default networks denied."""


class ForbiddenDestination(OSError, SmartDispatchError):
    """The policy refuses a destination. An OSError so that aiohttp treats it as the connection
    failure it is (cleaning up and wrapping it), and a `SmartDispatchError` as every error we
    raise; `http_common` turns it into a permanent `ProviderError` with code
    ``forbidden_destination``. The text names the host and the denied
    address and network, never the URL (whose query may carry secrets)."""

    def __init__(self, host: str, problem: str) -> None:
        super().__init__(problem)
        self.host = host


def _unknown_form(host: str) -> ForbiddenDestination:
    return ForbiddenDestination(
        host, f"{host} is an IP address in a form that cannot be checked (use the canonical form)"
    )


def _literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address; None for a name. Raises ForbiddenDestination for a host that
    aiohttp would take as an IP address (digits and dots, or a colon) but is not canonical."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        if ":" in host or host.replace(".", "").isdigit():
            raise _unknown_form(host) from None
        return None


def proxy_endpoints(proxies: Mapping[str, str]) -> frozenset[tuple[str, int]]:
    """(host, port) of the http and https proxies in `proxies` (as from
    `urllib.request.getproxies_environment`): the endpoints `PolicyResolver` trusts."""
    endpoints: set[tuple[str, int]] = set()
    for scheme in ("http", "https"):
        try:
            url = URL(proxies.get(scheme, ""))
        except ValueError:
            continue
        if url.raw_host and url.port is not None:
            endpoints.add((url.raw_host.lower().rstrip("."), url.port))
    return frozenset(endpoints)


class PolicyResolver(AbstractResolver):
    """An aiohttp resolver enforcing `policy` (module docstring). `inner` does the lookups
    (default: aiohttp's `DefaultResolver`, created on first use inside the running loop) and is
    closed with this resolver. `trusted` (host, port) pairs — the proxies — are not checked."""

    def __init__(
        self,
        policy: DestinationPolicy,
        *,
        inner: AbstractResolver | None = None,
        trusted: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.policy = policy
        self._inner = inner
        self._trusted = frozenset((host.lower().rstrip("."), port) for host, port in trusted)

    def _lookup(self) -> AbstractResolver:
        if self._inner is None:
            self._inner = DefaultResolver()
        return self._inner

    def _judge(self, answer: ResolveResult) -> Refusal | ForbiddenDestination | None:
        try:
            address = ipaddress.ip_address(answer["host"])
        except ValueError:  # never seen from getaddrinfo; refuse what cannot be checked
            return _unknown_form(answer["host"])
        return self.policy.refusal(address)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The inner resolver's answer without the denied addresses; raises
        `ForbiddenDestination` when every address is denied (an empty answer is returned as is)."""
        answers = await self._lookup().resolve(host, port, family)
        if (host.lower().rstrip("."), port) in self._trusted:
            return answers
        kept: list[ResolveResult] = []
        refused: list[Refusal | ForbiddenDestination] = []
        for answer in answers:
            verdict = self._judge(answer)
            if verdict is None:
                kept.append(answer)
            else:
                refused.append(verdict)
        if refused and not kept:
            raise ForbiddenDestination(host, f"{host} resolves only to denied addresses: {_list(refused)}")
        return kept

    async def check_url(self, url: str, *, via_proxy: bool) -> None:
        """Before a request to `url`: raise `ForbiddenDestination` when its host is a denied IP
        literal, or — `via_proxy` — a name with any denied address. A URL without a host or that
        does not parse is left to the HTTP client to reject."""
        try:
            parsed = URL(url)
            host, port = parsed.raw_host, parsed.port
        except ValueError:
            return
        if not host:
            return
        literal = _literal_address(host)
        if literal is not None:
            refusal = self.policy.refusal(literal)
            if refusal is not None:
                raise ForbiddenDestination(host, str(refusal))
            return
        if not via_proxy:
            return  # the connection pool calls `resolve`, which enforces the policy
        try:
            answers = await self._lookup().resolve(host, port or 0, socket.AF_UNSPEC)
        except OSError:
            return  # only the proxy can resolve it: nothing of ours to check (module docstring)
        refused = [verdict for verdict in map(self._judge, answers) if verdict is not None]
        if refused:
            raise ForbiddenDestination(
                host, f"{host} resolves to denied addresses (checked before the proxy): {_list(refused)}"
            )

    async def close(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.close()


def _list(refused: list[Refusal | ForbiddenDestination]) -> str:
    more = f"; and {len(refused) - 1} more" if len(refused) > 1 else ""
    return f"{refused[0]}{more}"
