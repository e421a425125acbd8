"""iOS push through Apple Push Notification service (APNs), HTTP/2, token-based authentication.

    POST <api_base>/3/device/<device token>          (HTTP/2 only)
    authorization: bearer <JWT>
    apns-topic: <topic: the app's bundle id>          apns-push-type: alert | background | ...
    apns-priority: 10 (5 for background)              apns-expiration: <epoch s> (0: now or never)
    apns-id: <UUID from the idempotency key>          apns-collapse-id: <content.fields["collapse_id"]>
    {"aps": {"alert": {"title": "<content.title>", "body": "<content.text>"}},
     "<field>": <value>, ..., "sd_message_id": "...", "sd_dispatch_id": "..."}
      → 200 (apns-id header)  or  4xx/5xx {"reason": "BadDeviceToken"} (410 adds "timestamp")

A background push (`push_type: background`) carries ``{"aps": {"content-available": 1}}`` and
priority 5, as APNs requires. `collapse_id` (at most 64 bytes) is taken out of the fields and
sent as the header; every other field is a custom key of the payload. The apns-id is derived
from the delivery's idempotency key, so every attempt of one plan step has the same one.

**The provider token** is a JWT signed with the team's .p8 key (ES256):
``{"alg": "ES256", "kid": <key id>, "typ": "JWT"}.{"iss": <team id>, "iat": <now>}``. APNs
refuses one older than an hour (ExpiredProviderToken) and one replaced more often than every
20 minutes (TooManyProviderTokenUpdates), so a token is minted on first use and replaced once it
is `token_refresh_s` old (default 50 min; 20 min to just under 60 allowed). Minting is local
and synchronous (a signature, no I/O), so it never waits and needs no single flight: the event
loop runs one sender at a time through it. A 403 ExpiredProviderToken / InvalidProviderToken
replaces the token once and repeats the send within the same attempt, unless the refused token
was itself such a replacement less than 20 minutes old (APNs would refuse the update): then
ExpiredProviderToken is retryable after the rest of those 20 minutes and InvalidProviderToken
permanent (the key, key id or team id is wrong).

*Why httpx:* APNs speaks HTTP/2 only. aiohttp, the other providers' client, speaks HTTP/1.1;
httpx with its `http2` extra (the `h2` protocol stack) is an asyncio client with pooling and
time bounds that multiplexes sends over one connection, as Apple asks (one connection, many
streams), where raw `h2` would mean writing connection management and flow control here. The
client allows HTTP/2 only (`http1=False`): over https ALPN must agree on h2, and over plain
http (a local fake in tests) it speaks h2 with prior knowledge.

`api_base`: https://api.push.apple.com (production, the default) or
https://api.sandbox.push.apple.com (development builds).

Outcome (the error `code` is APNs' reason, else the HTTP status):

    200                                         sent; `provider_message_id` is the apns-id
    400 BadDeviceToken, 400 DeviceTokenNotForTopic, 410 Unregistered, 410 ExpiredToken
                                                permanent, and the device address is invalid
                                                (`ProviderError.invalid_address`)
    429 TooManyRequests                         retryable (rate limited), Retry-After honoured
    500 InternalServerError, 503 ServiceUnavailable, 503 Shutdown, other 5xx,
    429 TooManyProviderTokenUpdates, 400 IdleTimeout
                                                retryable
    403 ExpiredProviderToken / InvalidProviderToken   token replaced once, send repeated; refused
                                                again: Expired… retryable (a clock off?),
                                                Invalid… permanent (key, key id or team wrong)
    other 4xx (BadTopic, PayloadTooLarge, BadCertificate, TopicDisallowed, ...)   permanent
    no answer within timeout_s                  retryable, code ``timeout``
    connection / protocol errors                retryable, code ``connection``
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from google.auth import jwt
from google.auth.crypt import es256
from google.auth.crypt.es import EsSigner

from smart_dispatch.channels.base import Delivery, Provider, ProviderError, SendResult
from smart_dispatch.channels.http_common import MAX_BODY_BYTES, USER_AGENT, HttpOptions, parse_retry_after

PRODUCTION = "https://api.push.apple.com"
SANDBOX = "https://api.sandbox.push.apple.com"
DEFAULT_TOKEN_REFRESH_S = 50 * 60.0
MIN_TOKEN_REFRESH_S = 20 * 60.0
MAX_TOKEN_AGE_S = 60 * 60.0
PUSH_TYPES = frozenset(
    {"alert", "background", "location", "voip", "complication", "fileprovider", "mdm"}
    | {"liveactivity", "pushtotalk", "widgets", "controls"}
)
INVALID_ADDRESS_REASONS = frozenset(
    {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
)
RETRYABLE_REASONS = frozenset(
    {
        "TooManyRequests",
        "InternalServerError",
        "ServiceUnavailable",
        "Shutdown",
        "TooManyProviderTokenUpdates",
        "IdleTimeout",
    }
)
TOKEN_REASONS = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})
_APNS_ID_NAMESPACE = uuid.UUID("5b8c3f0e-4a57-4b8e-9a43-6f2d3c1e7a10")


@dataclass(frozen=True, slots=True)
class ApnsKey:
    """A token-based authentication key: the team id, the key's id and its signer (.p8, P-256)."""

    team_id: str
    key_id: str
    signer: EsSigner

    @classmethod
    def from_pem(cls, pem: str, *, team_id: str, key_id: str) -> ApnsKey:
        """Raises `ValueError` saying what is wrong (never quoting the key)."""
        try:
            signer = es256.ES256Signer.from_string(pem, key_id)
        except (ValueError, TypeError, UnicodeError):
            raise ValueError("not an EC private key in PEM form (the .p8 file from Apple)") from None
        if signer.algorithm != "ES256":
            raise ValueError(f"an {signer.algorithm} key; APNs takes P-256 keys (ES256)")
        return cls(team_id, key_id, signer)

    def token(self, now: float) -> str:
        """The provider token (JWT) issued at `now` (epoch seconds)."""
        claims = {"iss": self.team_id, "iat": int(now)}
        encoded: bytes = jwt.encode(self.signer, claims, header={"alg": "ES256"})  # type: ignore[no-untyped-call]
        return encoded.decode("ascii")


@dataclass(frozen=True, slots=True)
class ApnsConfig:
    """`topic`: the app's bundle id (apns-topic); `expiration_s`: how long APNs keeps trying a
    device that is offline (0: deliver now or never); `priority`: None for 10 (5 for
    background pushes)."""

    key: ApnsKey
    topic: str
    api_base: str = PRODUCTION
    push_type: str = "alert"
    priority: int | None = None
    expiration_s: float = 86400.0
    token_refresh_s: float = DEFAULT_TOKEN_REFRESH_S


@dataclass(frozen=True, slots=True)
class _ProviderToken:
    value: str
    minted_at: float
    forced: bool  # minted because APNs refused the previous one


class ApnsProvider(Provider):
    """iOS push through APNs, see the module docstring. `clock` is wall-clock epoch seconds."""

    def __init__(
        self,
        config: ApnsConfig,
        *,
        options: HttpOptions | None = None,
        channel: str = "push",
        name: str = "apns",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not MIN_TOKEN_REFRESH_S <= config.token_refresh_s < MAX_TOKEN_AGE_S:
            raise ValueError("token_refresh_s must be at least 1200 (20 min) and under 3600 (60 min)")
        self.channel = channel
        self.name = name
        self.config = config
        self.options = options or HttpOptions()
        self._clock = clock
        self._base = config.api_base.rstrip("/")
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        self._token: _ProviderToken | None = None
        self.token_mints = 0
        """How many provider tokens were minted (for tests and metrics)."""

    def _http(self) -> httpx.AsyncClient:
        client = self._client
        if client is None:
            if self._closed:
                raise RuntimeError(f"{self.name}: the HTTP client has been closed")
            client = self._client = httpx.AsyncClient(
                http1=False,
                http2=True,
                timeout=httpx.Timeout(self.options.timeout_s),
                limits=httpx.Limits(max_connections=self.options.max_connections),
                headers={"user-agent": USER_AGENT},
                follow_redirects=False,
            )
        return client

    def provider_token(self, *, refused: str | None = None) -> str:
        """The JWT to send with: the current one while younger than `token_refresh_s` and not
        `refused`, else a new one (see the module docstring for the 20-minute rule). Raises
        `ProviderError` when APNs refused a replacement that is too young to be replaced."""
        now = self._clock()
        token = self._token
        if token is not None and refused is None and now - token.minted_at < self.config.token_refresh_s:
            return token.value
        if token is not None and refused is not None and token.value != refused:
            return token.value  # another sender replaced it meanwhile
        if token is not None and refused is not None and token.forced:
            wait_s = token.minted_at + MIN_TOKEN_REFRESH_S - now
            if wait_s > 0:
                raise self.error(
                    "APNs refused the provider token, which was replaced less than 20 minutes ago",
                    retryable=True,
                    code="token_refused",
                    retry_after_s=wait_s,
                )
        self.token_mints += 1
        self._token = _ProviderToken(self.config.key.token(now), now, forced=refused is not None)
        return self._token.value

    async def send(self, delivery: Delivery) -> SendResult:
        device = delivery.address.strip()
        if not device:
            raise self.error("empty device token", retryable=False, code="invalid_address")
        headers, body = self._request(delivery)
        url = f"{self._base}/3/device/{quote(device, safe='')}"
        token = self.provider_token()
        status, reply_headers, reply = await self._post(url, headers, body, token)
        reason = _reason(reply)
        if status == 403 and reason in TOKEN_REASONS:
            try:
                token = self.provider_token(refused=token)
            except ProviderError as exc:
                if reason == "InvalidProviderToken":
                    raise self.error(
                        "403 InvalidProviderToken: the key, key id or team id is wrong",
                        retryable=False,
                        code=reason,
                    ) from exc
                raise
            status, reply_headers, reply = await self._post(url, headers, body, token)
            reason = _reason(reply)
        if status == 200:
            return SendResult(self.name, reply_headers.get("apns-id", headers["apns-id"]))
        raise self._failure(status, reason, reply_headers)

    def _request(self, delivery: Delivery) -> tuple[dict[str, str], bytes]:
        config, content = self.config, delivery.content
        fields = dict(content.fields)
        collapse_id = str(fields.pop("collapse_id", "") or "")
        background = config.push_type == "background"
        aps: dict[str, Any]
        if background:
            aps = {"content-available": 1}
        else:
            alert = {key: value for key, value in (("title", content.title), ("body", content.text)) if value}
            aps = {"alert": alert}
        payload: dict[str, Any] = {str(key): value for key, value in fields.items() if key != "aps"}
        payload.update(aps=aps, sd_message_id=delivery.message_id, sd_dispatch_id=delivery.dispatch_id)
        priority = config.priority if config.priority is not None else 5 if background else 10
        expiration = 0 if config.expiration_s <= 0 else int(self._clock() + config.expiration_s)
        headers = {
            "apns-topic": config.topic,
            "apns-push-type": config.push_type,
            "apns-priority": str(priority),
            "apns-expiration": str(expiration),
            "apns-id": str(uuid.uuid5(_APNS_ID_NAMESPACE, delivery.idempotency_key)),
            "content-type": "application/json",
        }
        if collapse_id:
            if len(collapse_id.encode()) > 64:
                raise self.error("collapse_id is longer than 64 bytes", retryable=False, code="BadCollapseId")
            headers["apns-collapse-id"] = collapse_id
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()
        return headers, body

    async def _post(
        self, url: str, headers: Mapping[str, str], body: bytes, token: str
    ) -> tuple[int, httpx.Headers, bytes]:
        client = self._http()
        try:
            async with asyncio.timeout(self.options.timeout_s):  # the whole exchange
                request = client.build_request(
                    "POST", url, headers={**headers, "authorization": f"bearer {token}"}, content=body
                )
                response = await client.send(request, stream=True)
                try:
                    reply = bytearray()
                    async for chunk in response.aiter_bytes():
                        reply += chunk
                        if len(reply) >= MAX_BODY_BYTES:
                            break
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise self.error(
                f"no answer within {self.options.timeout_s} s", retryable=True, code="timeout"
            ) from exc
        except httpx.InvalidURL as exc:
            raise self.error(f"invalid URL: {exc}", retryable=False, code="invalid_url") from exc
        except (httpx.TransportError, OSError) as exc:
            raise self.error(
                f"connection failed: {type(exc).__name__}: {exc}", retryable=True, code="connection"
            ) from exc
        return response.status_code, response.headers, bytes(reply[:MAX_BODY_BYTES])

    def _failure(self, status: int, reason: str, headers: httpx.Headers) -> ProviderError:
        code = reason or str(status)
        problem = f"HTTP {status}" + (f": {reason}" if reason else "")
        if reason in INVALID_ADDRESS_REASONS or (status == 410 and not reason):
            return self.error(
                f"{problem} (the device token is not valid for this app)",
                retryable=False,
                code=code,
                invalid_address=True,
            )
        if reason in RETRYABLE_REASONS or reason == "ExpiredProviderToken" or status == 429 or status >= 500:
            retry_after = parse_retry_after(headers.get("retry-after"))
            return self.error(problem, retryable=True, code=code, retry_after_s=retry_after)
        return self.error(problem, retryable=False, code=code)

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _reason(body: bytes) -> str:
    """APNs' `reason` in an error body ("" when there is none)."""
    try:
        value = json.loads(body) if body else {}
    except ValueError:
        return ""
    reason = value.get("reason") if isinstance(value, dict) else None
    return str(reason)[:64] if reason else ""
