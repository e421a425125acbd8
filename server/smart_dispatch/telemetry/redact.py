"""Masking of contact addresses and user ids for logs, the decision log and its lookups.

    mask_address("sms", "+15551234100")        -> "+1****00"
    mask_address("email", "ada@example.com")   -> "a***@example.com"
    mask_address("webhook", "https://u:p@hooks.example.com/x/secret") -> "https://hooks.example.com/****"
    mask_address("push", "fcm-token-abcdef123456")                    -> "fc****56"
    hash_user("user-1", key)                   -> "hmac:…" (16 hex digits, keyed)

Enough is kept to tell two addresses apart while reading a log; never enough to contact anyone.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

_MASK = "****"


#: Characters of a masked address, at most (a hostile address cannot fill the logs).
MAX_MASKED = 80


def mask_address(channel: str, address: str) -> str:
    return _mask_address(channel, address)[:MAX_MASKED]


def _mask_address(channel: str, address: str) -> str:
    if not address:
        return ""
    if channel == "email" or (channel != "webhook" and "@" in address):
        return mask_email(address)
    if channel == "sms":
        return mask_phone(address)
    if channel == "webhook" or "://" in address:
        return mask_url(address)
    return mask_token(address)


def mask_phone(phone: str) -> str:
    """The first digit of the country code and the last two digits; nothing of short numbers.
    (Country code, area prefix and three digits left 8 of 12 digits readable.)"""
    if len(phone) >= 10:
        return phone[:2] + _MASK + phone[-2:]
    if len(phone) >= 7:
        return _MASK + phone[-2:]
    return _MASK


def mask_email(email: str) -> str:
    local, at, domain = email.rpartition("@")
    if not at:
        return mask_token(email)
    return (local[:1] + "***" if local else "") + "@" + domain


def mask_url(url: str) -> str:
    """Scheme and host only: paths and credentials may hold secrets."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return _MASK
    if not parts.scheme or not host:
        return _MASK
    return f"{parts.scheme}://{host}{port}/{_MASK}"


def mask_token(value: str) -> str:
    if len(value) >= 12:
        return value[:2] + _MASK + value[-2:]
    return _MASK


def hash_user(user_id: str, key: bytes) -> str:
    """A pseudonym: HMAC-SHA256 of the user id under `key` (`SD_LOG_KEY`), 16 hex digits. The
    same id and key always give the same value; without the key nobody can match a known id to
    it (a bare hash of a phone-number-like id would be guessed in seconds)."""
    return "hmac:" + hmac.digest(key, user_id.encode(), "sha256").hex()[:16]


_PROCESS_KEY = secrets.token_bytes(32)


def pseudonym_key(configured: str) -> bytes:
    """The key of `hash_user`: the configured one (`SD_LOG_KEY`), else one random per process
    (pseudonyms then differ between processes and restarts; lookups by message id still work)."""
    if configured:
        return configured.encode()
    return _PROCESS_KEY


def mask_value(value: object) -> object:
    """A profile value as the decision log keeps it: strings that look like an e-mail address
    or a phone number masked, anything else as it is."""
    if not isinstance(value, str):
        return value
    if "@" in value:
        return mask_email(value)[:MAX_MASKED]
    if len(value) < 7:
        return value  # too short to hold 7 digits
    if value.isascii():
        digits = len(value) - len(value.translate(_DIGITS_GONE))
    else:  # full-width and other Unicode digits count too
        digits = sum(c.isdigit() for c in value)
    if digits >= 7 and digits >= len(value) - 4:
        return mask_phone(value)
    return value


_DIGITS_GONE = str.maketrans("", "", "0123456789")
