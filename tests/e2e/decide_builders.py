"""Builders for DecideRequests and clock helpers shared by the end-to-end tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb

_ids = itertools.count()


def zone_with_local_hour(hour: int, now: datetime | None = None) -> str:
    """An `Etc/GMT±N` zone whose local hour is `hour` right now (whole-hour offsets)."""
    now = now or datetime.now(UTC)
    offset = (hour - now.hour) % 24
    if offset > 14:
        offset -= 24
    if offset == 0:
        return "Etc/GMT"
    # POSIX-style names: Etc/GMT-9 is UTC+9.
    return f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def active_since(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat().replace("+00:00", "Z")


def decide_request(
    category: str = "marketing",
    *,
    user: str = "user-1",
    message_id: str | None = None,
    timezone: str | None = None,
    addresses: dict[str, str] | None = None,
    attributes: dict[str, Any] | None = None,
    opted_out: tuple[str, ...] = (),
    preferred: tuple[str, ...] = (),
    channels: tuple[str, ...] = (),
    not_after: datetime | None = None,
    dry_run: bool = False,
    data: dict[str, Any] | None = None,
    template: str = "",
) -> pb.DecideRequest:
    """A request for a recipient awake at noon local time, reachable by SMS, e-mail and in-app."""
    attrs = struct_pb2.Struct()
    attrs.update(attributes or {})
    message = pb.Message(
        id=message_id or f"msg-{next(_ids)}", category=category, channels=list(channels), template=template
    )
    if data:
        message.data.update(data)
    if not_after is not None:
        message.not_after.FromDatetime(not_after)
    recipient = pb.Recipient(
        user_id=user,
        timezone=timezone if timezone is not None else zone_with_local_hour(12),
        addresses=addresses
        if addresses is not None
        else {"sms": "+15550100", "email": "ada@example.com", "in_app": "inbox-ada"},
        opted_out=list(opted_out),
        preferred=list(preferred),
        attributes=attrs,
    )
    return pb.DecideRequest(message=message, recipient=recipient, dry_run=dry_run)


def at(ts: Any) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return ts.ToDatetime(tzinfo=UTC)


def codes(response: pb.DecideResponse) -> list[str]:
    return [reason.code for reason in response.reasons]
