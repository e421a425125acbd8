"""Push notifications through Firebase Cloud Messaging's HTTP v1 API.

    POST <api_base>/v1/projects/<project>/messages:send
    Authorization: Bearer <OAuth2 access token>
    Idempotency-Key: <delivery.idempotency_key>
    {"message": {"token": "<device token>",
                 "notification": {"title": "<content.title>", "body": "<content.text>"},
                 "data": {"<field>": "<text>", ..., "sd_message_id": "...", "sd_dispatch_id": "..."}}}

An empty title or body is left out of `notification`. FCM `data` values must be strings: text
fields pass through, other values are sent as JSON. The `sd_message_id` / `sd_dispatch_id`
entries let the app report `opened` / `clicked` with `ReportEvent`. FCM itself has no
idempotency key; the header is sent for gateways that deduplicate.

**Access tokens.** Two modes (`FcmConfig`):

- a service account (the JSON key file Firebase hands out): the provider mints its own OAuth2
  access tokens for scope ``https://www.googleapis.com/auth/firebase.messaging`` with the
  JWT-bearer grant (RFC 7523) against the JSON's ``token_uri``:

      POST <token_uri>   grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>
      JWT  header {"alg": "RS256", "typ": "JWT", "kid": <private_key_id>}
           claims {"iss": <client_email>, "scope": ..., "aud": <token_uri>, "iat": now, "exp": now+3600}
        → {"access_token": "...", "expires_in": 3599, "token_type": "Bearer"}

  The token is used until `token_margin_s` (default 300 s, at most half its lifetime) before it
  expires, then replaced; concurrent sends that need a new token share ONE exchange (a single
  flight: they all await the same request, and all see its error if it fails). A 401 from FCM
  (the token was revoked or expired early) replaces the token once and repeats the send within
  the same attempt.
- a bearer token minted elsewhere (`token_env`), used as it is and never refreshed (for a
  gateway in FCM's shape, or a token another process keeps fresh).

*Why the exchange is done here rather than by google-auth's `service_account.Credentials`:*
google-auth loads the key and signs the assertion (`google.auth.crypt`, `google.auth.jwt`),
but its `Credentials.refresh` is a blocking call on the `requests` transport with its own clock.
Doing the one POST with the provider's aiohttp session keeps the event loop free without a
thread hop per refresh, goes through the same time bound, proxy settings and error
classification as every other request (a 5xx or 429 of the token endpoint is retryable, an
``invalid_grant`` permanent), and takes the provider's injected clock for ``iat``/``exp`` and
for the refresh decision, so refresh is tested on a fake clock.

Outcome (the error `code` is FCM's ``errorCode`` detail when present, else the error
``status``, else the HTTP status):

    2xx                                   sent; `provider_message_id` is the reply's `name`
    404 UNREGISTERED / NOT_FOUND          permanent, and the device address is invalid
                                          (`ProviderError.invalid_address`: the sender pool
                                          records it, the person's next decisions skip it)
    429 QUOTA_EXCEEDED                    retryable (rate limited), Retry-After honoured
    503 UNAVAILABLE, 500 INTERNAL, 5xx    retryable, Retry-After honoured
    400 INVALID_ARGUMENT,                 permanent
    403 SENDER_ID_MISMATCH,
    401 THIRD_PARTY_AUTH_ERROR,
    401 UNAUTHENTICATED (after the one refresh), 403 PERMISSION_DENIED, other 4xx
    timeouts, connection errors           retryable (http_common.py)

Token endpoint: 2xx without a usable token, 5xx, 429 → retryable (``oauth_*`` codes); a 4xx
error (``invalid_grant``: a deleted key, a clock far off; ``unauthorized_client``) → permanent,
code ``oauth_<error>``. Neither the key nor the assertion nor a token ever appears in an error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from google.auth import crypt, jwt

from smart_dispatch.channels.base import Delivery, ProviderError, SendResult
from smart_dispatch.channels.http_common import (
    RETRYABLE_STATUSES,
    HttpOptions,
    HttpProvider,
    HttpReply,
    bearer,
    parse_retry_after,
)

DEFAULT_API_BASE = "https://fcm.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S = 3600
DEFAULT_TOKEN_MARGIN_S = 300.0
#: errorCode / status → (retryable, the address is invalid)
PERMANENT_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "SENDER_ID_MISMATCH",
        "THIRD_PARTY_AUTH_ERROR",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)
INVALID_ADDRESS_CODES = frozenset({"UNREGISTERED", "NOT_FOUND"})
RETRYABLE_CODES = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """What a Google service-account key file says: who signs (`client_email`), where tokens
    come from (`token_uri`), the project, and the signer of its private key."""

    client_email: str
    token_uri: str
    project_id: str
    signer: crypt.Signer

    @classmethod
    def from_json(cls, text: str) -> ServiceAccount:
        """Parse a service-account key file's JSON. Raises `ValueError` saying what is wrong
        (never quoting the key)."""
        try:
            info = json.loads(text)
        except ValueError:
            raise ValueError("not JSON (a service-account key file from the Firebase console)") from None
        if not isinstance(info, Mapping):
            raise ValueError("not a JSON object")
        if info.get("type", "service_account") != "service_account":
            raise ValueError(f"type is {info.get('type')!r}, not 'service_account'")
        for key in ("client_email", "private_key", "token_uri"):
            if not isinstance(info.get(key), str) or not info[key]:
                raise ValueError(f"no {key!r}")
        parts = urlsplit(info["token_uri"])
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("token_uri is not an http(s) URL")
        try:
            signer = crypt.RSASigner.from_service_account_info(info)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError):
            raise ValueError("private_key is not an RSA private key in PEM form") from None
        project = info.get("project_id")
        return cls(
            info["client_email"], info["token_uri"], project if isinstance(project, str) else "", signer
        )

    def assertion(self, now: float) -> str:
        """The signed JWT of the JWT-bearer grant, issued at `now` (epoch seconds)."""
        issued = int(now)
        claims = {
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME_S,
        }
        encoded: bytes = jwt.encode(self.signer, claims)  # type: ignore[no-untyped-call]
        return encoded.decode("ascii")


@dataclass(frozen=True, slots=True)
class FcmConfig:
    """`project` is the FCM project id; either `service_account` (tokens minted and refreshed
    here) or `token` (a bearer token used as it is); `api_base` has no trailing path;
    `token_margin_s`: how long before its expiry a minted token is replaced."""

    project: str
    token: str = ""
    api_base: str = DEFAULT_API_BASE
    service_account: ServiceAccount | None = None
    token_margin_s: float = DEFAULT_TOKEN_MARGIN_S


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    expires_at: float  # on the provider's clock (epoch seconds)
    refresh_at: float


def fcm_error_code(reply: HttpReply) -> str:
    """FCM's most specific error code in `reply` (errorCode detail > status > HTTP status). Pure."""
    error = reply.json_object().get("error")
    if isinstance(error, Mapping):
        details = error.get("details")
        for detail in details if isinstance(details, list) else []:
            if isinstance(detail, Mapping) and detail.get("errorCode"):
                return str(detail["errorCode"])
        if error.get("status"):
            return str(error["status"])
    return str(reply.status)


def data_strings(fields: Mapping[str, Any]) -> dict[str, str]:
    """FCM data values must be strings: text passes through, anything else becomes JSON."""
    return {
        str(key): value if isinstance(value, str) else json.dumps(value, default=str)
        for key, value in fields.items()
    }


class FcmProvider(HttpProvider):
    """Push through FCM HTTP v1, see the module docstring. `clock` is wall-clock epoch seconds
    (JWT times are wall times): injected by tests to cross token lifetimes."""

    def __init__(
        self,
        config: FcmConfig,
        *,
        options: HttpOptions | None = None,
        channel: str = "push",
        name: str = "fcm",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(channel=channel, name=name, options=options or HttpOptions())
        if not config.token and config.service_account is None:
            raise ValueError("FcmConfig needs a service_account or a token")
        self.config = config
        self._clock = clock
        base = config.api_base.rstrip("/")
        self._url = f"{base}/v1/projects/{quote(config.project, safe='')}/messages:send"
        self._token: AccessToken | None = None
        self._flight: asyncio.Future[AccessToken] | None = None
        self.token_fetches = 0
        """How many access tokens were minted (for tests and metrics)."""

    async def send(self, delivery: Delivery) -> SendResult:
        if not delivery.address.strip():
            raise self.error("empty device token", retryable=False, code="invalid_address")
        content = delivery.content
        data = data_strings(content.fields)
        data.update(sd_message_id=delivery.message_id, sd_dispatch_id=delivery.dispatch_id)
        notification = {
            key: value for key, value in (("title", content.title), ("body", content.text)) if value
        }
        payload = {"message": {"token": delivery.address, "notification": notification, "data": data}}
        token = await self.access_token()
        reply = await self._post(payload, delivery, token)
        refused = reply.status == 401 and fcm_error_code(reply) in ("UNAUTHENTICATED", "401")
        if refused and self.config.service_account is not None:
            # our token was revoked or expired early (THIRD_PARTY_AUTH_ERROR, also a 401, is not)
            token = await self.access_token(stale=token)
            reply = await self._post(payload, delivery, token)
        if not reply.ok:
            raise self._send_error(reply)
        return SendResult(self.name, reply.json_text("name"))

    async def _post(self, payload: Mapping[str, Any], delivery: Delivery, token: str) -> HttpReply:
        headers = {"Idempotency-Key": delivery.idempotency_key, **bearer(token)}
        return await self.post_json(self._url, payload, headers=headers)

    def _send_error(self, reply: HttpReply) -> ProviderError:
        code = fcm_error_code(reply)
        error = reply.json_object().get("error")
        detail = str(error.get("message", ""))[:200] if isinstance(error, Mapping) else ""
        problem = f"HTTP {reply.status}" + (f": {detail}" if detail else "")
        status = reply.status
        if code in INVALID_ADDRESS_CODES or status == 404:
            return self.error(
                f"{problem} (the device token is not registered)",
                retryable=False,
                code=code,
                invalid_address=True,
            )
        if code in RETRYABLE_CODES or status == 429 or status >= 500:
            retry_after = parse_retry_after(reply.headers.get("Retry-After"))
            return self.error(problem, retryable=True, code=code, retry_after_s=retry_after)
        if code in PERMANENT_CODES:
            return self.error(problem, retryable=False, code=code)
        retryable = status in RETRYABLE_STATUSES  # 408, 425; other 4xx (and 1xx, 3xx) permanent
        retry_after = parse_retry_after(reply.headers.get("Retry-After")) if retryable else None
        return self.error(problem, retryable=retryable, code=code, retry_after_s=retry_after)

    async def access_token(self, *, stale: str | None = None) -> str:
        """The bearer token to send with: the configured one, or a minted one that is not near
        expiry and is not `stale` (the token FCM just refused). Concurrent callers needing a new
        token share one exchange. Raises `ProviderError` when none can be had."""
        account = self.config.service_account
        if account is None:
            return self.config.token
        token = self._token
        if token is not None and token.value != stale and self._clock() < token.refresh_at:
            return token.value
        flight = self._flight
        if flight is None:
            flight = self._flight = asyncio.ensure_future(self._mint(account))
            flight.add_done_callback(self._landed)
        # shield: a sender cancelled (its attempt timed out) must not cancel the others' exchange
        return (await asyncio.shield(flight)).value

    def _landed(self, flight: asyncio.Future[AccessToken]) -> None:
        if self._flight is flight:
            self._flight = None
        if flight.cancelled():
            return
        if flight.exception() is None:
            self._token = flight.result()

    async def _mint(self, account: ServiceAccount) -> AccessToken:
        self.token_fetches += 1
        now = self._clock()
        form = urlencode({"grant_type": JWT_BEARER, "assertion": account.assertion(now)})
        reply = await self.request(
            "POST",
            account.token_uri,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            content=form.encode(),
        )
        body = reply.json_object()
        if not reply.ok:
            error = str(body.get("error", "")) or str(reply.status)
            description = str(body.get("error_description", ""))[:200]
            retryable = reply.status in (408, 429) or reply.status >= 500
            raise self.error(
                f"access token: HTTP {reply.status}: {error}" + (f": {description}" if description else ""),
                retryable=retryable,
                code=f"oauth_{error}",
                retry_after_s=parse_retry_after(reply.headers.get("Retry-After")) if retryable else None,
            )
        value = body.get("access_token")
        try:
            lifetime_s = float(body.get("expires_in", 0))
        except (TypeError, ValueError):
            lifetime_s = 0.0
        if not isinstance(value, str) or not value or not lifetime_s > 0:
            raise self.error("access token: malformed reply", retryable=True, code="oauth_malformed_reply")
        margin_s = min(self.config.token_margin_s, lifetime_s / 2)
        return AccessToken(value, now + lifetime_s, now + lifetime_s - margin_s)

    async def close(self) -> None:
        flight, self._flight = self._flight, None
        if flight is not None and not flight.done():
            flight.cancel()
        await super().close()
