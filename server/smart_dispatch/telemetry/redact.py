"""Masking of contact addresses and user ids for logs, the decision log and its lookups.

    mask_address("sms", "+15551234100")        -> "+1555****100"
    mask_address("email", "ada@example.com")   -> "a***@example.com"
    mask_address("webhook", "https://u:p@hooks.example.com/x/secret") -> "https://hooks.example.com/****"
    mask_address("push", "fcm-token-abcdef123456")                    -> "fc****56"
    hash_user("user-1")                        -> "sha256:…" (16 hex digits)

Enough is kept to tell two addresses apart while reading a log; never enough to contact anyone.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

_MASK = "****"


def mask_address(channel: str, address: str) -> str:
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
    """Country code and area prefix plus the last 3 digits of long numbers; less of short ones."""
    if len(phone) >= 11:
        return phone[:5] + _MASK + phone[-3:]
    if len(phone) >= 7:
        return phone[:3] + _MASK + phone[-2:]
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


def hash_user(user_id: str) -> str:
    """A stable pseudonym: the same user id always gives the same value, which cannot be
    turned back into the id without guessing it."""
    return "sha256:" + hashlib.sha256(user_id.encode()).hexdigest()[:16]
