"""HTTP plumbing shared by the providers that speak HTTP (SMS gateway, WeChat, FCM-shaped push,
webhook): one pooled `aiohttp.ClientSession` per provider, one time bound per attempt, and ONE
place that turns transport failures and HTTP statuses into `ProviderError`.

The session is created on the first request, inside the running event loop (a provider may be
built before the loop runs), and closed by `HttpProvider.close`. Its connector keeps up to
`max_connections` connections alive between attempts (idle ones for `KEEPALIVE_S` seconds).
Proxies: `HTTP_PROXY` / `HTTPS_PROXY` / `NO_PROXY` (either case) are read once, when the
provider is built, and applied per URL; ~/.netrc is not used. TLS is verified against the
system's CA store.

Classification (`HttpProvider.check`):

    2xx                         success
    408, 425, 429, 5xx          retryable; `retry_after_s` from Retry-After (seconds or HTTP-date)
    other 4xx, 1xx, 3xx         permanent (invalid address, bad request, auth, redirects are
                                not followed: a redirect means the URL is misconfigured)

Transport failures (`HttpProvider.request`): the attempt exceeding `timeout_s` (connect, write,
read and the whole exchange) → retryable, code ``timeout``; connection refused / reset, protocol
errors → retryable, code ``connection``; a reply that cannot be decoded → retryable, code
``protocol``; a malformed or non-HTTP URL → permanent, code ``invalid_url``; a request the client
refuses to build (credentials in the URL as well as an Authorization header, a line break in a
header value) → permanent, code ``invalid_request``; a destination the provider's policy refuses
(`destinations.ForbiddenDestination`, raised by its resolver or `_check_destination`) →
permanent, code ``forbidden_destination``, and no request is made. The original exception stays
attached as `__cause__`.

Provider-specific hooks (no-ops here): `_make_resolver` supplies the DNS resolver of the
provider's connection pool; `_check_destination` vets each URL (and the proxy it will go through)
before the request.

Reply bodies are read up to `MAX_BODY_BYTES`: providers only need a small JSON answer, and a
webhook receiver must not be able to make us buffer an unbounded body.

Secrets in URLs: some APIs take them in the query string (WeChat's `secret` and
`access_token`). aiohttp's client logs no request URLs, but some of its exceptions carry the
request URL, query included, in their text; the texts of transport errors therefore lose every
URL's query string (`redact_queries`) before they become part of a `ProviderError`, which is
logged and stored with the dispatch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib import request as urllib_request
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.http_exceptions import ContentEncodingError
from multidict import CIMultiDictProxy

from smart_dispatch.channels.base import Delivery, Provider
from smart_dispatch.channels.destinations import ForbiddenDestination

MAX_BODY_BYTES = 64 * 1024
RETRYABLE_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "smart-dispatch"
KEEPALIVE_S = 5.0
"""How long an idle pooled connection is kept. Many servers close idle connections after about
5 s; reusing one they have just closed would fail the attempt."""

# scheme://authority/path?query — group 1 is everything before the query.
_URL_WITH_QUERY = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s#'\"<>]*")


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
    headers: CIMultiDictProxy[str]
    """Case-insensitive: ``reply.headers.get("retry-after")`` finds ``Retry-After``."""
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


def redact_queries(text: str) -> str:
    """`text` with the query string of every URL in it removed (a query may carry secrets). Pure."""
    return _URL_WITH_QUERY.sub(r"\1", text)


def _describe(exc: BaseException) -> str:
    """An exception as text for an error message, without URL query strings."""
    return redact_queries(f"{type(exc).__name__}: {exc}")


def _url_problem(exc: aiohttp.ClientError) -> str:
    """What is wrong with the URL of an `InvalidURL` / `NonHttpUrlClientError`, without the URL
    itself (its query may carry secrets)."""
    if isinstance(exc, aiohttp.NonHttpUrlClientError):
        scheme = urlsplit(str(exc.args[0]) if exc.args else "").scheme
        return f"unsupported scheme {scheme!r} (http or https only)" if scheme else "no http(s) scheme"
    description = exc.description if isinstance(exc, aiohttp.InvalidURL) else None
    detail = description or exc.__cause__
    return redact_queries(str(detail)) if detail else "malformed, or without a host"


def _forbidden(exc: BaseException) -> ForbiddenDestination | None:
    """The `ForbiddenDestination` behind `exc` (aiohttp wraps resolver errors), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ForbiddenDestination):
            return seen
        seen = seen.__cause__
    return None


def bearer(token: str) -> dict[str, str]:
    """An Authorization header for `token`; no header when the token is empty."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class HttpProvider(Provider):
    """Base of the HTTP providers: owns the session, bounds and translates each request.

    Subclasses implement `send` with `request` / `post_json` and `check`.
    """

    def __init__(self, *, channel: str, name: str, options: HttpOptions) -> None:
        self.channel = channel
        self.name = name
        self.options = options
        self._session: aiohttp.ClientSession | None = None
        self._resolver: AbstractResolver | None = None
        self._closed = False
        self._proxies: dict[str, str] = urllib_request.getproxies_environment()  # read once: not per request

    def _client(self) -> aiohttp.ClientSession:
        """The provider's session, created on first use inside the running event loop."""
        session = self._session
        if session is None:
            if self._closed:
                raise RuntimeError(f"{self.name}: the HTTP client has been closed")
            self._resolver = self._make_resolver()
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.options.max_connections,
                    keepalive_timeout=KEEPALIVE_S,
                    resolver=self._resolver,  # None: aiohttp's default
                ),
                # One bound for the whole attempt; never rounded up to a whole second (aiohttp
                # rounds bounds above `ceil_threshold`).
                timeout=aiohttp.ClientTimeout(total=self.options.timeout_s, ceil_threshold=math.inf),
                headers={"User-Agent": USER_AGENT},
                skip_auto_headers=("Content-Type",),  # no application/octet-stream guess
            )
        return session

    def _make_resolver(self) -> AbstractResolver | None:
        """Hook: the DNS resolver of the provider's connection pool, None for aiohttp's default.
        Called once, inside the running event loop, when the session is created; closed with
        the session."""
        return None

    async def _check_destination(self, url: str, *, proxy: str | None) -> None:
        """Hook: raise `ForbiddenDestination` when no request may be made to `url` (through
        `proxy`, None for a direct connection). Called before every request, outside the session's
        `timeout_s` bound: an override doing I/O bounds it itself (a TimeoutError is classified
        as ``timeout``). Default: every destination is fine."""
        return None

    def _proxy_for(self, url: str) -> str | None:
        """The environment's proxy for `url`, None when there is none or NO_PROXY exempts it."""
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme.lower())
        bypass: bool = urllib_request.proxy_bypass_environment(  # type: ignore[attr-defined]  # not in typeshed
            parts.hostname or "", self._proxies
        )
        if not proxy or bypass:
            return None
        return proxy

    def phone_number(self, delivery: Delivery) -> str:
        """The delivery's address as a phone number; an empty one is a permanent error."""
        number = delivery.address.strip()
        if not number:
            raise self.error("empty phone number", retryable=False, code="invalid_address")
        return number

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
        session = self._client()
        try:
            proxy = self._proxy_for(url) if self._proxies else None
            await self._check_destination(url, proxy=proxy)
            async with session.request(
                method,
                url,
                params=params,
                headers=headers,
                data=content,
                allow_redirects=False,
                proxy=proxy,
            ) as response:
                body = bytearray()
                while len(body) < MAX_BODY_BYTES:
                    chunk = await response.content.read(MAX_BODY_BYTES - len(body))
                    if not chunk:
                        break
                    body += chunk
                return HttpReply(response.status, response.headers, bytes(body))
        except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
            raise self.error(
                f"no answer within {self.options.timeout_s} s", retryable=True, code="timeout"
            ) from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise self.error(
                f"invalid URL: {_url_problem(exc)}", retryable=False, code="invalid_url"
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            if isinstance(exc.__cause__, ContentEncodingError):  # e.g. gzip that does not inflate
                raise self.error(f"bad reply: {_describe(exc)}", retryable=True, code="protocol") from exc
            raise self.error(  # the body ended early or was malformed
                f"connection failed: {_describe(exc)}", retryable=True, code="connection"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            refused = _forbidden(exc)
            if refused is not None:
                raise self.error(
                    f"forbidden destination: {redact_queries(str(refused))}",
                    retryable=False,
                    code="forbidden_destination",
                ) from exc
            # Refused / reset / closed connections, TLS and DNS failures, malformed status lines
            # and headers (ClientResponseError: statuses themselves never raise here).
            raise self.error(
                f"connection failed: {_describe(exc)}", retryable=True, code="connection"
            ) from exc
        except ValueError as exc:
            raise self.error(
                f"invalid request: {_describe(exc)}", retryable=False, code="invalid_request"
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
        """Close the session and its pooled connections; the provider cannot send afterwards."""
        self._closed = True
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        if session is not None:
            await session.close()
        if resolver is not None:  # a resolver passed to the connector is not closed by it
            await resolver.close()


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; values JSON cannot encode (datetimes, decimals) become text."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def signed_host(url: str) -> str:
    """The Host a request to `url` carries, as request signatures cover it: the host name, with
    the port only when it is not the scheme's default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    if parts.port is not None and parts.port != default_port:
        host = f"{host}:{parts.port}"
    return host
