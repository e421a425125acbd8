"""Request validation: every problem names the proto field (`INVALID_ARGUMENT`)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from smart_dispatch.domain import KNOWN_CHANNELS, DecideRequest
from smart_dispatch.errors import InvalidRequestError

MAX_ID_LENGTH = 256


def validate_request(request: DecideRequest, categories: frozenset[str]) -> ZoneInfo:
    """Check `request`; return the recipient's timezone. Raises `InvalidRequestError`."""
    message, recipient = request.message, request.recipient
    _require_id(message.id, "message.id")
    _require_id(recipient.user_id, "recipient.user_id")
    if not message.category:
        raise InvalidRequestError("message.category", "is required")
    if categories and message.category not in categories:
        raise InvalidRequestError(
            "message.category",
            f"unknown category {message.category!r}; the loaded rules cover: {', '.join(sorted(categories))}",
        )
    _known_channels(message.channels, "message.channels")
    _known_channels(recipient.addresses, "recipient.addresses")
    _known_channels(recipient.opted_out, "recipient.opted_out")
    _known_channels(recipient.preferred, "recipient.preferred")
    return zone_for(recipient.timezone or "UTC")


def zone_for(name: str) -> ZoneInfo:
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidRequestError("recipient.timezone", f"unknown IANA timezone {name!r}") from exc


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _require_id(value: str, field: str) -> None:
    if not value or not value.strip():
        raise InvalidRequestError(field, "is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidRequestError(field, f"longer than {MAX_ID_LENGTH} characters")


def _known_channels(channels: Iterable[str], field: str) -> None:
    for channel in channels:
        if channel not in KNOWN_CHANNELS:
            raise InvalidRequestError(
                f"{field}[{channel!r}]" if field == "recipient.addresses" else field,
                f"unknown channel {channel!r}; known: {', '.join(KNOWN_CHANNELS)}",
            )
