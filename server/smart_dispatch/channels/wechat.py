"""WeChat official-account template messages.

Access token:

    GET <api_base>/cgi-bin/token?grant_type=client_credential&appid=<appid>&secret=<secret>
      → {"access_token": "...", "expires_in": 7200}      or {"errcode": 40013, "errmsg": "..."}

The token is cached until `token_margin_s` seconds before it expires (at most half its lifetime)
and fetched again under a lock, so a burst of concurrent sends fetches it once.

Send:

    POST <api_base>/cgi-bin/message/template/send?access_token=<token>
    {"touser": "<openid>", "template_id": "...", "url": "...", "client_msg_id": "<idempotency key>",
     "data": {"<key>": {"value": "<text>"}, ...}}
      → {"errcode": 0, "errmsg": "ok", "msgid": 200228332}

`client_msg_id` is WeChat's own de-duplication key (same openid + id within minutes sends once).
A field whose value is already ``{"value": ..., "color": ...}`` passes through.

`errcode` mapping (HTTP-level failures are classified as for every HTTP provider):

    0                                   sent; `provider_message_id` is `msgid`
    40001, 42001, 40014                 the token is invalid / expired: fetched again and the send
                                        repeated ONCE within the same attempt; failing again →
                                        retryable
    -1 (system busy), 45009, 45011      retryable (rate limits / quota)
    anything else                       permanent, e.g. 43004 (user unsubscribed), 40003 (invalid
    (43004, 40003, 40037, 47003, …)     openid), 40037 (invalid template id), 47003 (bad data)

Token fetch failures use the same table (40013 invalid appid, 40125 invalid secret, 40164 IP not
allow-listed → permanent: they are configuration errors no retry will fix). The error `code` is
the errcode as text. Secrets and tokens never appear in error messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from smart_dispatch.channels.base import Delivery, ProviderError, SendResult
from smart_dispatch.channels.http_common import HttpOptions, HttpProvider

DEFAULT_API_BASE = "https://api.weixin.qq.com"
DEFAULT_TOKEN_MARGIN_S = 300.0
TOKEN_INVALID = frozenset({40001, 42001, 40014})
RETRYABLE_ERRCODES = frozenset({-1, 45009, 45011})


@dataclass(frozen=True, slots=True)
class WeChatConfig:
    """The official account's `appid` and `secret`; `token_margin_s` (seconds) is how long
    before its expiry a cached access token is replaced."""

    appid: str
    secret: str
    api_base: str = DEFAULT_API_BASE
    token_margin_s: float = DEFAULT_TOKEN_MARGIN_S


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float  # on the provider's monotonic clock


def template_data(fields: Mapping[str, Any]) -> dict[str, Any]:
    """WeChat's `data` object: each field as ``{"value": text}`` unless it already is one. Pure."""
    data: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, Mapping) and "value" in value:
            data[str(key)] = {str(k): str(v) for k, v in value.items()}
        else:
            data[str(key)] = {"value": str(value)}
    return data


def _errcode(body: Mapping[str, Any]) -> int | None:
    """`errcode` of a reply (None when absent or not a number; token replies have none)."""
    try:
        return int(body["errcode"])
    except (KeyError, TypeError, ValueError):
        return None


class WeChatProvider(HttpProvider):
    """Template messages to openids, see the module docstring. `clock` is monotonic seconds."""

    def __init__(
        self,
        config: WeChatConfig,
        *,
        options: HttpOptions | None = None,
        channel: str = "wechat",
        name: str = "wechat",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(channel=channel, name=name, options=options or HttpOptions())
        self.config = config
        self._base = config.api_base.rstrip("/")
        self._clock = clock
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        self.token_fetches = 0
        """How many access tokens were fetched (for tests and metrics)."""

    async def send(self, delivery: Delivery) -> SendResult:
        if not delivery.address.strip():
            raise self.error("empty openid", retryable=False, code="invalid_address")
        if not delivery.content.template_id:
            raise self.error("content has no template_id", retryable=False, code="no_template_id")
        payload: dict[str, Any] = {
            "touser": delivery.address,
            "template_id": delivery.content.template_id,
            "client_msg_id": delivery.idempotency_key,
            "data": template_data(delivery.content.fields),
        }
        if delivery.content.url:
            payload["url"] = delivery.content.url
        token = await self.access_token()
        body = await self._send_template(token, payload)
        if _errcode(body) in TOKEN_INVALID:
            token = await self.access_token(stale=token)
            body = await self._send_template(token, payload)
        errcode = _errcode(body)
        if errcode == 0:
            return SendResult(self.name, str(body.get("msgid", "")))
        raise self._errcode_error("template send", errcode, body)

    async def access_token(self, *, stale: str | None = None) -> str:
        """A valid access token: the cached one unless it is near expiry or equals `stale` (the
        token WeChat just rejected), else a freshly fetched one. Concurrent callers wait for one
        fetch. Raises `ProviderError` when the token cannot be fetched."""
        cached = self._usable_token(stale)
        if cached is not None:
            return cached
        async with self._token_lock:
            cached = self._usable_token(stale)  # another sender may have refreshed it meanwhile
            if cached is not None:
                return cached
            self._token = await self._fetch_token()
            return self._token.value

    def _usable_token(self, stale: str | None) -> str | None:
        token = self._token
        if token is None or token.value == stale or self._clock() >= token.refresh_at:
            return None
        return token.value

    async def _fetch_token(self) -> _Token:
        self.token_fetches += 1
        params = {"grant_type": "client_credential", "appid": self.config.appid, "secret": self.config.secret}
        reply = await self.request("GET", f"{self._base}/cgi-bin/token", params=params)
        self.check(reply, detail="access token fetch")
        body = reply.json_object()
        value = body.get("access_token")
        try:
            expires_in_s = float(body.get("expires_in", 0))
        except (TypeError, ValueError):
            expires_in_s = 0.0
        if not isinstance(value, str) or not value or expires_in_s <= 0:
            raise self._errcode_error("access token fetch", _errcode(body), body)
        margin_s = min(self.config.token_margin_s, expires_in_s / 2)
        return _Token(value, self._clock() + expires_in_s - margin_s)

    async def _send_template(self, token: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        url = f"{self._base}/cgi-bin/message/template/send"
        reply = await self.post_json(url, payload, params={"access_token": token})
        self.check(reply, detail="template send")
        return reply.json_object()

    def _errcode_error(self, stage: str, errcode: int | None, body: Mapping[str, Any]) -> ProviderError:
        if errcode is None:
            return self.error(f"{stage}: malformed reply", retryable=True, code="malformed_reply")
        retryable = errcode in RETRYABLE_ERRCODES or errcode in TOKEN_INVALID
        errmsg = str(body.get("errmsg", ""))[:200]
        return self.error(f"{stage}: errcode {errcode}: {errmsg}", retryable=retryable, code=str(errcode))
