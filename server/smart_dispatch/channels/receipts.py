"""Delivery receipts pushed by providers, on the admin HTTP port (admin_http.py, SD_METRICS_PORT):

    POST /receipts/<provider name>

`<provider name>` is the provider's `name` in the providers file (default: its type). A provider
that takes receipts is a `ReceiptSource`: it authenticates the request its own way (Twilio's
X-Twilio-Signature over SD_PUBLIC_URL + path; a shared `?token=` for the vendors that sign
nothing) and parses it into `Receipt`s. Each final one (delivered, or failed) is applied by the
`apply` callback (`Operations.delivery_receipt`): the provider's message id is looked up in the
dispatch store (the sender pool indexed it when the provider accepted the message) and becomes a
`ReportEvent` DELIVERED or FAILED for that message's person and channel.

Answers: the vendor's own acknowledgement (HTTP 200) once every receipt of the request was
handled, unknown message ids included (acknowledged and counted as `unknown`: a receipt for a
message this sidecar no longer knows, or never sent, must not be pushed again and again); a
status that is not final (Twilio's `queued`, `sent`, …) is acknowledged and counted as
`ignored`; 403 for a request that fails authentication, 400 for one that cannot be parsed
(both counted as `rejected`); 404 for a provider that takes no receipts; 503 while the store
cannot be reached, so that the vendor pushes again later. `counts` keeps the numbers per
provider; unknown ids are logged at INFO.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from aiohttp import web

from smart_dispatch.admin_http import AdminServer
from smart_dispatch.channels.base import Provider
from smart_dispatch.errors import ConfigurationError, SmartDispatchError, StoreError

log = logging.getLogger(__name__)
PREFIX = "/receipts/"


@dataclass(frozen=True, slots=True)
class ReceiptRequest:
    """A receipt push as it arrived. `url` is the URL the vendor called, as the vendor knows it
    (SD_PUBLIC_URL + path + query; "" when SD_PUBLIC_URL is not set); `headers` are
    case-insensitive."""

    url: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Receipt:
    """One message's final status at the provider: `delivered`, or not (failed, undelivered,
    rejected). `at`: when, per the vendor (None: now); `status`: the vendor's code, for logs."""

    provider_message_id: str
    delivered: bool
    at: datetime | None = None
    status: str = ""


class ReceiptRejected(SmartDispatchError):
    """A receipt request that is refused: `status` 403 (authentication) or 400 (malformed)."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem)
        self.status = status


@runtime_checkable
class ReceiptSource(Protocol):
    """A provider that takes receipts at `/receipts/<name>`."""

    name: str
    channel: str
    #: the body of the vendor's expected acknowledgement and its content type
    receipt_ack: tuple[str, bytes]

    def receipts_at(self, url: str) -> None:
        """Told, before serving, the public URL of its receipt endpoint ("" when there is none:
        no SD_PUBLIC_URL). A provider that names the URL in each send (Twilio's StatusCallback)
        uses it; the others' receipt URL is set in the vendor's console."""

    def parse_receipts(self, request: ReceiptRequest) -> list[Receipt | None]:
        """The receipts of `request` (None for a status that is not final). Raises
        `ReceiptRejected`."""


Apply = Callable[[str, Receipt], Awaitable[bool]]
"""(provider name, receipt) → True when it matched a message, False for an unknown id."""


def receipt_sources(providers: Mapping[str, Provider]) -> dict[str, ReceiptSource]:
    """name → provider, for every provider (behind failover and rate limits too) that takes
    receipts. Raises `ConfigurationError` when two of them share a name (on two channels)."""
    found: dict[str, ReceiptSource] = {}
    for provider in providers.values():
        for leaf in _leaves(provider):
            if not isinstance(leaf, ReceiptSource):
                continue
            if found.get(leaf.name, leaf) is not leaf:
                raise ConfigurationError(
                    f"two providers that take receipts are both named {leaf.name!r}: give each its own name"
                )
            found[leaf.name] = leaf
    return found


def _leaves(provider: Provider) -> Iterator[Provider]:
    """The providers `provider` is made of (failover, rate limit), itself when it is one."""
    inner = getattr(provider, "providers", None)  # FailoverProvider
    if isinstance(inner, tuple):
        for each in inner:
            yield from _leaves(each)
        return
    wrapped = getattr(provider, "provider", None)  # RateLimitedProvider
    if isinstance(wrapped, Provider):
        yield from _leaves(wrapped)
        return
    yield provider


def mount_receipts(
    admin: AdminServer, providers: Mapping[str, Provider], apply: Apply, public_url: str = ""
) -> ReceiptEndpoints | None:
    """Add `/receipts/<name>` for every provider that takes receipts to the admin port (before it
    starts); None when no provider does."""
    sources = receipt_sources(providers)
    if not sources:
        return None
    endpoints = ReceiptEndpoints(sources, apply, public_url)
    admin.add_routes(endpoints.routes())
    return endpoints


class ReceiptEndpoints:
    """The `/receipts/<name>` routes for `sources`. `public_url` is SD_PUBLIC_URL (the admin port
    as the vendors reach it; "" when unset)."""

    def __init__(self, sources: Mapping[str, ReceiptSource], apply: Apply, public_url: str = "") -> None:
        self.sources = dict(sources)
        self._apply = apply
        self._public = public_url.rstrip("/")
        self.counts: dict[str, Counter[str]] = {name: Counter() for name in self.sources}
        for name, source in self.sources.items():
            source.receipts_at(f"{self._public}{PREFIX}{name}" if self._public else "")

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PREFIX + "{provider}", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["provider"]
        source = self.sources.get(name)
        if source is None:
            raise web.HTTPNotFound(text=f"no provider {name!r} takes receipts here\n")
        counts = self.counts[name]
        pushed = ReceiptRequest(
            f"{self._public}{request.raw_path}" if self._public else "",
            dict(request.query),
            request.headers,
            await request.read(),
        )
        try:
            receipts = source.parse_receipts(pushed)
        except ReceiptRejected as exc:
            counts["rejected"] += 1
            log.warning("receipt for %s refused (%d): %s", name, exc.status, exc)
            return web.Response(status=exc.status, text=f"{exc}\n")
        for receipt in receipts:
            if receipt is None:
                counts["ignored"] += 1
                continue
            try:
                known = await self._apply(name, receipt)
            except StoreError as exc:  # the vendor pushes again later
                log.warning("receipt for %s not applied, store unavailable: %s", name, exc)
                return web.Response(status=503, text="store unavailable: push again later\n")
            if known:
                counts["applied"] += 1
            else:
                counts["unknown"] += 1
                log.info(
                    "receipt for %s: unknown message id %r (acknowledged)", name, receipt.provider_message_id
                )
        content_type, body = source.receipt_ack
        return web.Response(status=200, body=body, content_type=content_type)
