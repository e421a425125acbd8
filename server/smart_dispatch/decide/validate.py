"""Request validation: every problem names the proto field (`INVALID_ARGUMENT`).

Lengths and counts are checked first, before any value is used or quoted, so an oversized value
costs nothing and is never echoed back whole. The limits (characters; entries):

    message.id, recipient.user_id            256
    message.category                          64  (a category name of the rule files)
    message.template                         128  letters, digits, _ . - (a directory name)
    message.labels                            64 entries; keys 128, values 1,024
    message.channels, recipient.opted_out,
    recipient.preferred, recipient.addresses  16 entries; channel names 32
    recipient.addresses values             2,048  (a webhook URL is an address)
    recipient.timezone                        64  an IANA name
    recipient.locale                          64
    Struct values (message.data,
    recipient.attributes)                     nested at most 16 levels; strings 65,535
                                              (the rules engine's regex limit)
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from smart_dispatch.domain import DecideRequest, known_channels
from smart_dispatch.errors import InvalidRequestError, quote

MAX_ID_LENGTH = 256
MAX_CATEGORY_LENGTH = 64
MAX_TEMPLATE_LENGTH = 128
MAX_LABELS = 64
MAX_LABEL_KEY_LENGTH = 128
MAX_LABEL_VALUE_LENGTH = 1024
MAX_CHANNEL_ENTRIES = 16
MAX_CHANNEL_LENGTH = 32
MAX_ADDRESS_LENGTH = 2048
MAX_TIMEZONE_LENGTH = 64
MAX_LOCALE_LENGTH = 64
MAX_STRUCT_DEPTH = 16
MAX_STRUCT_STRING_LENGTH = 65_535
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def validate_request(request: DecideRequest, categories: frozenset[str]) -> ZoneInfo:
    """Check `request`; return the recipient's timezone. Raises `InvalidRequestError`."""
    message, recipient = request.message, request.recipient
    check_id(message.id, "message.id")
    check_id(recipient.user_id, "recipient.user_id")
    _check_length(message.category, "message.category", MAX_CATEGORY_LENGTH)
    _check_length(message.template, "message.template", MAX_TEMPLATE_LENGTH)
    _check_length(recipient.timezone, "recipient.timezone", MAX_TIMEZONE_LENGTH)
    _check_length(recipient.locale, "recipient.locale", MAX_LOCALE_LENGTH)
    _check_mapping(message.labels, "message.labels", MAX_LABELS, MAX_LABEL_KEY_LENGTH, MAX_LABEL_VALUE_LENGTH)
    _check_mapping(
        recipient.addresses,
        "recipient.addresses",
        MAX_CHANNEL_ENTRIES,
        MAX_CHANNEL_LENGTH,
        MAX_ADDRESS_LENGTH,
    )
    for field, channels in (
        ("message.channels", message.channels),
        ("recipient.opted_out", recipient.opted_out),
        ("recipient.preferred", recipient.preferred),
    ):
        _check_count(channels, field, MAX_CHANNEL_ENTRIES)
    if not message.category:
        raise InvalidRequestError("message.category", "is required")
    if categories and message.category not in categories:
        raise InvalidRequestError(
            "message.category",
            f"unknown category {quote(message.category)}; the loaded rules cover: "
            f"{', '.join(sorted(categories))}",
        )
    if message.template and not _TEMPLATE_NAME.fullmatch(message.template):
        raise InvalidRequestError(
            "message.template", f"{quote(message.template)} is not a template name (letters, digits, _ . -)"
        )
    _known_channels(message.channels, "message.channels")
    _known_channels(recipient.addresses, "recipient.addresses")
    _known_channels(recipient.opted_out, "recipient.opted_out")
    _known_channels(recipient.preferred, "recipient.preferred")
    return zone_for(recipient.timezone or "UTC")


def zone_for(name: str) -> ZoneInfo:
    _check_length(name, "recipient.timezone", MAX_TIMEZONE_LENGTH)
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidRequestError("recipient.timezone", f"unknown IANA timezone {quote(name)}") from exc


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def check_id(value: str, field: str) -> str:
    """A required id: not blank, at most `MAX_ID_LENGTH` characters. Returns it."""
    _check_length(value, field, MAX_ID_LENGTH)
    if not value or not value.strip():
        raise InvalidRequestError(field, "is required")
    return value


def _check_length(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidRequestError(field, f"longer than {limit} characters ({len(value):,})")


def _check_count(items: Collection[object], field: str, limit: int) -> None:
    if len(items) > limit:
        raise InvalidRequestError(field, f"more than {limit} entries ({len(items):,})")


def _check_mapping(
    items: Mapping[str, str], field: str, count: int, key_limit: int, value_limit: int
) -> None:
    _check_count(items, field, count)
    for key, value in items.items():
        if len(key) > key_limit:
            raise InvalidRequestError(f"{field}[{quote(key)}]", f"key longer than {key_limit} characters")
        _check_length(value, f"{field}[{quote(key)}]", value_limit)


def _known_channels(channels: Iterable[str], field: str) -> None:
    known = known_channels()
    for channel in channels:
        if channel not in known:
            raise InvalidRequestError(
                f"{field}[{quote(channel)}]" if field == "recipient.addresses" else field,
                f"unknown channel {quote(channel)}; known: {', '.join(known)}",
            )
