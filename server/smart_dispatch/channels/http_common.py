"""HTTP plumbing shared by the providers that speak HTTP (SMS gateway, WeChat, FCM-shaped push,
webhook): one pooled `httpx.AsyncClient` per provider, one time bound per attempt, and ONE place
that turns transport failures and HTTP statuses into `ProviderError`.

Classification (`HttpProvider.check`):

    2xx                         success
    408, 425, 429, 5xx          retryable; `retry_after_s` from Retry-After (seconds or HTTP-date)
    other 4xx, 1xx, 3xx         permanent (invalid address, bad request, auth, redirects are
                                not followed: a redirect means the URL is misconfigured)

Transport failures (`HttpProvider.request`): the attempt exceeding `timeout_s` (connect, write,
read and the whole exchange) → retryable, code ``timeout``; connection refused / reset, protocol
errors → retryable, code ``connection``; a reply that cannot be decoded → retryable, code
``protocol``; a malformed or non-HTTP URL → permanent, code ``invalid_url``. The original
exception stays attached as `__cause__`.

Reply bodies are read up to `MAX_BODY_BYTES`: providers only need a small JSON answer, and a
webhook receiver must not be able to make us buffer an unbounded body.

httpx logs every request URL at INFO. Some APIs take secrets in the query string (WeChat's
`secret` and `access_token`), so the first provider installs `RedactQuery` on the ``httpx``
logger: logged URLs lose their query string.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from smart_dispatch.channels.base import Provider, ProviderError

MAX_BODY_BYTES = 64 * 1024
RETRYABLE_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "smart-dispatch"


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """`timeout_s` bounds one whole attempt (connect + send + reply) in seconds;
    `max_connections` caps the provider's connection pool (kept alive between attempts)."""

    timeout_s: float = 5.0
    max_connections: int = 100


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A provider's answer: status, headers and at most `MAX_BODY_BYTES` of body."""

    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json_object(self) -> Mapping[str, Any]:
        """The body as a JSON object; an empty mapping when it is not one (never raises)."""
        try:
            value = json.loads(self.body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def json_text(self, key: str) -> str:
        """The body's JSON `key` as text ("" when absent or the body is not a JSON object)."""
        value = self.json_object().get(key)
        return "" if value is None else str(value)

    def snippet(self, limit: int = 200) -> str:
        """The start of the body as text, for error messages."""
        return self.body[:limit].decode("utf-8", "replace").strip()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait according to a Retry-After header value: delay-seconds (``120``) or an
    HTTP-date (``Wed, 21 Oct 2015 07:28:00 GMT``, relative to `now`, default the current UTC
    time). Never negative; None when the header is absent or unparseable. Pure."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class RedactQuery(logging.Filter):
    """Drops the query string of every `httpx.URL` in a log record's arguments (it may carry
    secrets). Never rejects a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(arg, httpx.URL) for arg in record.args):
            record.args = tuple(
                arg.copy_with(query=None) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


def _redact_httpx_logs() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(existing, RedactQuery) for existing in logger.filters):
        logger.addFilter(RedactQuery())


def bearer(token: str) -> dict[str, str]:
    """An Authorization header for `token`; no header when the token is empty."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class HttpProvider(Provider):
    """Base of the HTTP providers: owns the client, bounds and translates each request.

    `transport` replaces the network (tests, or `httpx.MockTransport` in a user's own tests).
    Subclasses implement `send` with `request` / `post_json` and `check`.
    """

    def __init__(
        self,
        *,
        channel: str,
        name: str,
        options: HttpOptions,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.channel = channel
        self.name = name
        self.options = options
        _redact_httpx_logs()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(options.timeout_s),
            limits=httpx.Limits(
                max_connections=options.max_connections,
                max_keepalive_connections=options.max_connections,
            ),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            transport=transport,
        )

    def error(
        self, problem: str, *, retryable: bool, code: str = "", retry_after_s: float | None = None
    ) -> ProviderError:
        """A `ProviderError` naming this provider and channel (to be raised by the caller)."""
        return ProviderError(
            problem,
            provider=self.name,
            channel=self.channel,
            retryable=retryable,
            retry_after_s=retry_after_s,
            code=code,
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> HttpReply:
        """One HTTP exchange within `options.timeout_s`. Raises `ProviderError` for transport
        failures (see the module docstring); any HTTP status is returned, not raised."""
        try:
            async with asyncio.timeout(self.options.timeout_s):
                async with self._client.stream(
                    method, url, params=params, headers=headers, content=content
                ) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) >= MAX_BODY_BYTES:
                            break
                    return HttpReply(response.status_code, response.headers, bytes(body[:MAX_BODY_BYTES]))
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise self.error(
                f"no answer within {self.options.timeout_s} s", retryable=True, code="timeout"
            ) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            # Named before TransportError: UnsupportedProtocol is one, but retrying cannot help.
            raise self.error(f"invalid URL: {exc}", retryable=False, code="invalid_url") from exc
        except httpx.TransportError as exc:
            raise self.error(
                f"connection failed: {type(exc).__name__}: {exc}", retryable=True, code="connection"
            ) from exc
        except httpx.RequestError as exc:  # e.g. a reply body that does not decode
            raise self.error(
                f"bad reply: {type(exc).__name__}: {exc}", retryable=True, code="protocol"
            ) from exc

    async def post_json(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpReply:
        """POST `payload` as compact UTF-8 JSON (values JSON cannot encode are sent as text)."""
        return await self.request(
            "POST",
            url,
            params=params,
            headers={"Content-Type": "application/json", **(headers or {})},
            content=encode_json(payload),
        )

    def check(self, reply: HttpReply, *, code: str = "", detail: str = "") -> None:
        """Raise `ProviderError` unless `reply` is 2xx, classified by status (module docstring).
        `code` overrides the error code (default: the status); `detail` (default: the start of
        the body) is added to the text."""
        if reply.ok:
            return
        status = reply.status
        retryable = status in RETRYABLE_STATUSES or 500 <= status < 600
        detail = detail or reply.snippet()
        problem = f"HTTP {status}" + (f": {detail}" if detail else "")
        raise self.error(
            problem,
            retryable=retryable,
            code=code or str(status),
            retry_after_s=parse_retry_after(reply.headers.get("Retry-After")) if retryable else None,
        )

    async def close(self) -> None:
        await self._client.aclose()


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; values JSON cannot encode (datetimes, decimals) become text."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()
