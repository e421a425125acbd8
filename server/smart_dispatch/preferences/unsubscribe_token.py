"""Signed, expiring unsubscribe tokens, and the one-click links (RFC 8058) e-mail carries.

A token says "this person may opt out of this category on this channel until then", with no
login: whoever holds the link may use it, so it names nothing else and expires.

    token   = base64url(payload) "." base64url(HMAC-SHA256(secret, "sd-unsubscribe." payload_b64))
    payload = JSON [1, user_id, category, channel, expires (epoch s)], UTF-8

Verification checks the MAC first (constant-time), then the expiry, and raises
`UnsubscribeTokenError` (an `InvalidRequestError` of the field `token`) with `reason`
malformed | bad_signature | expired. Tokens carry the user id in the clear (base64): the link
goes to the person it names, and only they see it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote as url_quote

from smart_dispatch.errors import ConfigurationError, UnsubscribeTokenError

#: Characters of a token, at most (a user id of 256 characters fits several times over).
MAX_TOKEN_CHARS = 4096
#: Bytes of a secret, at least.
MIN_SECRET_BYTES = 16
DEFAULT_TTL_S = 60 * 86400.0
_VERSION = 1
_DOMAIN = b"sd-unsubscribe."


@dataclass(frozen=True, slots=True)
class Unsubscription:
    """What a valid token allows: opting `user_id` out of `category` on `channel`."""

    user_id: str
    category: str
    channel: str
    expires_at: datetime


class UnsubscribeTokens:
    """Signs and verifies tokens with `secret` (at least `MIN_SECRET_BYTES` bytes, else
    `ConfigurationError`); a token is valid for `ttl_s` seconds after it is signed."""

    def __init__(
        self, secret: str | bytes, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"the unsubscribe secret has {len(key)} bytes; it needs at least {MIN_SECRET_BYTES}"
            )
        if not ttl_s > 0:
            raise ConfigurationError(f"the unsubscribe token lifetime must be positive, got {ttl_s!r}")
        self._key = key
        self._ttl_s = ttl_s
        self._clock = clock

    def sign(self, user_id: str, category: str, channel: str) -> str:
        expires = int(self._clock() + self._ttl_s)
        payload = json.dumps(
            [_VERSION, user_id, category, channel, expires], separators=(",", ":"), ensure_ascii=False
        )
        encoded = _b64encode(payload.encode("utf-8"))
        return f"{encoded}.{_b64encode(self._mac(encoded))}"

    def verify(self, token: str) -> Unsubscription:
        """The token's `Unsubscription`. Raises `UnsubscribeTokenError`."""
        if len(token) > MAX_TOKEN_CHARS:
            raise UnsubscribeTokenError("malformed", f"longer than {MAX_TOKEN_CHARS} characters")
        encoded, dot, signature = token.strip().partition(".")
        if not dot or not encoded or not signature:
            raise UnsubscribeTokenError("malformed", "not an unsubscribe token (<payload>.<signature>)")
        try:
            given = _b64decode(signature)
        except ValueError as exc:
            raise UnsubscribeTokenError("malformed", "the signature is not base64url") from exc
        if not hmac.compare_digest(given, self._mac(encoded)):
            raise UnsubscribeTokenError(
                "bad_signature", "the signature does not match (altered, or signed with another secret)"
            )
        try:
            version, user_id, category, channel, expires = json.loads(_b64decode(encoded))
        except (ValueError, TypeError) as exc:
            raise UnsubscribeTokenError("malformed", "the payload is not an unsubscribe request") from exc
        valid = (
            version == _VERSION
            and all(isinstance(v, str) and v for v in (user_id, category, channel))
            and isinstance(expires, int)
        )
        if not valid:
            raise UnsubscribeTokenError("malformed", "the payload is not an unsubscribe request")
        expires_at = datetime.fromtimestamp(expires, UTC)
        if self._clock() >= expires:
            raise UnsubscribeTokenError("expired", f"expired at {expires_at.isoformat()}")
        return Unsubscription(user_id, category, channel, expires_at)

    def _mac(self, encoded: str) -> bytes:
        return hmac.new(self._key, _DOMAIN + encoded.encode("ascii", "replace"), hashlib.sha256).digest()


class UnsubscribeLinks:
    """The one-click unsubscribe URL of a delivery: `<base_url>/unsubscribe?token=…`, served by
    the admin HTTP port (`POST`, RFC 8058). "" for a required category (`required(category)`:
    the current rules say so), which nobody may opt out of."""

    def __init__(self, tokens: UnsubscribeTokens, base_url: str, required: Callable[[str], bool]) -> None:
        if not base_url.startswith(("https://", "http://")) or not base_url.isascii():
            raise ConfigurationError(
                f"the public URL {base_url!r} must start with https:// or http:// (ASCII: punycode a host)"
            )
        self._tokens = tokens
        self._endpoint = base_url.rstrip("/") + "/unsubscribe?token="
        self._required = required

    def url_for(self, user_id: str, category: str, channel: str) -> str:
        if self._required(category):
            return ""
        return self._endpoint + url_quote(self._tokens.sign(user_id, category, channel), safe="")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Raises `ValueError` for anything but unpadded base64url."""
    if not text.isascii():
        raise ValueError("not ASCII")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc
