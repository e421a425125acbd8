"""Webhook: POST the message as JSON to the recipient's URL (the address), signed with HMAC-SHA256.

    POST <address>
    Content-Type: application/json
    Idempotency-Key: <delivery.idempotency_key>
    X-SmartDispatch-Timestamp: <unix seconds>
    X-SmartDispatch-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>
    {"message_id", "dispatch_id", "user_id", "channel", "text", "data"}

`data` is the rendered content's fields (the template data by default).

Receivers verify with `verify` (or `sign` in another language: the MAC input is the timestamp
header, a dot, and the raw body bytes exactly as received), reject stale timestamps to stop
replays, and deduplicate on `Idempotency-Key`, which is the same for every retry of one step:

    from smart_dispatch.channels.webhook import verify
    if not verify(secret, request.headers["X-SmartDispatch-Timestamp"], raw_body,
                  request.headers["X-SmartDispatch-Signature"]):
        return 401

Outcome: exactly as for SMS — 2xx sent (`provider_message_id` from a JSON `id`, if any); 429 with
Retry-After, 408, 5xx, timeouts and connection errors retryable; other 4xx permanent; an address
that is not an http(s) URL fails permanently without a request.

Destinations: the address comes with each message, so the provider only connects where its
`DestinationPolicy` allows (`smart_dispatch.channels.destinations`: link-local, unspecified and
the AWS IPv6 metadata address denied by default; `deny_private`, `deny_networks`,
`allow_networks` in the providers file). The policy is enforced on the addresses actually
connected to — resolved names through the connection pool's resolver, IP literals before the
request — and, through a proxy, on the target name as resolved here before the request. A denied
destination fails permanently with code ``forbidden_destination`` without a request; the message
names the host and the denied address and network, never the URL's query.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver

from smart_dispatch.channels.base import Delivery, SendResult
from smart_dispatch.channels.destinations import (
    DEFAULT_POLICY,
    DestinationPolicy,
    PolicyResolver,
    proxy_endpoints,
)
from smart_dispatch.channels.http_common import HttpOptions, HttpProvider, encode_json

TIMESTAMP_HEADER = "X-SmartDispatch-Timestamp"
SIGNATURE_HEADER = "X-SmartDispatch-Signature"
DEFAULT_TOLERANCE_S = 300.0


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def sign(secret: str | bytes, timestamp: int | str, body: str | bytes) -> str:
    """The signature header value for `body` sent at `timestamp` (unix seconds):
    ``sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``. Pure."""
    message = f"{timestamp}.".encode() + _bytes(body)
    return "sha256=" + hmac.new(_bytes(secret), message, hashlib.sha256).hexdigest()


def verify(
    secret: str | bytes,
    timestamp: str,
    body: str | bytes,
    signature: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now_s: float | None = None,
) -> bool:
    """For receivers: True when `signature` (the X-SmartDispatch-Signature header) signs `body`
    (the raw bytes received) at `timestamp` (the X-SmartDispatch-Timestamp header) with `secret`,
    and the timestamp is within `tolerance_s` seconds of `now_s` (default: the current time).
    Never raises: a malformed header is simply False. Comparison is constant-time."""
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    now = time.time() if now_s is None else now_s
    if abs(now - sent_at) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, sent_at, body), signature.strip())


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """`secret` keys the HMAC signature (shared with every receiver); `destinations` says which
    IP addresses may be connected to (default: all but link-local, unspecified and the AWS IPv6
    metadata address)."""

    secret: str
    destinations: DestinationPolicy = DEFAULT_POLICY


class WebhookProvider(HttpProvider):
    """Signed JSON webhooks, see the module docstring. `clock` returns unix seconds."""

    def __init__(
        self,
        config: WebhookConfig,
        *,
        options: HttpOptions | None = None,
        channel: str = "webhook",
        name: str = "webhook",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(channel=channel, name=name, options=options or HttpOptions())
        self.config = config
        self._clock = clock
        self._guard = PolicyResolver(config.destinations, trusted=proxy_endpoints(self._proxies))

    def _make_resolver(self) -> AbstractResolver:
        return self._guard

    async def _check_destination(self, url: str, *, proxy: str | None) -> None:
        # May resolve the target (through a proxy): bounded like the attempt itself.
        async with asyncio.timeout(self.options.timeout_s):
            await self._guard.check_url(url, via_proxy=proxy is not None)

    async def send(self, delivery: Delivery) -> SendResult:
        url = delivery.address.strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error("address is not an http(s) URL", retryable=False, code="invalid_address")
        body = encode_json(
            {
                "message_id": delivery.message_id,
                "dispatch_id": delivery.dispatch_id,
                "user_id": delivery.user_id,
                "channel": delivery.channel,
                "text": delivery.content.text,
                "data": dict(delivery.content.fields),
            }
        )
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": delivery.idempotency_key,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self.config.secret, timestamp, body),
        }
        reply = await self.request("POST", url, headers=headers, content=body)
        self.check(reply)
        return SendResult(self.name, reply.json_text("id"))
