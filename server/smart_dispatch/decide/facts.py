"""The facts document rules match against: the request plus derived facts.

category             message category
message.id / template / has_deadline
labels.<key>         message labels
user.id / timezone / locale
user.local_hour      0..23, recipient's local clock      user.local_minute  0..59
user.local_weekday   mon..sun                             user.is_weekend    bool
user.days_since_active   days since the later of attributes.last_active_at and the activity
                     the store saw (absent when neither is known)
user.allow_listed / user.deny_listed   bool
user.<attribute>     every scalar recipient attribute (derived names win on a clash)
reachable.<channel>  bool for every known channel (custom ones too): address present, not
                     opted out (in the request or the person's preferences), allowed by
                     message.channels, not an address a provider said is dead
preferences.locale   the person's stored locale ("" when none)
preferences.muted    bool: the person's mute holds this message now
preferences.opted_out            channels the person opted out of for this category (a list)
preferences.opted_out_of.<channel>   the same as a bool per known channel
preferences.in_quiet_hours       bool: now is inside the person's own quiet hours
preferences.channel_order        the person's channel order (a list)
                     For a required category (rules file) nothing is opted out nor muted.
behaviour.<channel>.sent / delivered / opened / clicked / converted / bounced / engagement
                     the engagement model's decayed counts and smoothed open rate, for each
                     channel it has counts of
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from smart_dispatch.behaviour.base import DEFAULT_HALF_LIFE_S, Behaviour, ChannelStats
from smart_dispatch.domain import DecideRequest, Message, Recipient, known_channels
from smart_dispatch.errors import InvalidRequestError, quote
from smart_dispatch.preferences.base import address_digest

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def reachable_channels(
    message: Message,
    recipient: Recipient,
    opted_out: Collection[str] = (),
    invalid: Sequence[tuple[str, str]] = (),
) -> tuple[str, ...]:
    """Channels with an address that the person did not opt out of (in the request, or
    `opted_out`: their stored preferences for this message), that the message allows, and that
    is not a known dead one (`invalid`: (channel, `address_digest`) pairs)."""
    dead = dict(invalid)
    return tuple(
        channel
        for channel in known_channels()
        if (address := recipient.addresses.get(channel))
        and channel not in recipient.opted_out
        and channel not in opted_out
        and (not message.channels or channel in message.channels)
        and not (channel in dead and address_digest(address) == dead[channel])
    )


def preference_facts(
    opted_out: Collection[str],
    muted: bool,
    in_quiet_hours: bool,
    channel_order: Sequence[str] = (),
    locale: str = "",
) -> dict[str, Any]:
    """The `preferences.*` facts: what the person's stored preferences say about this message."""
    known = known_channels()
    return {
        "locale": locale,
        "muted": muted,
        "opted_out": [channel for channel in known if channel in opted_out],
        "opted_out_of": {channel: channel in opted_out for channel in known},
        "in_quiet_hours": in_quiet_hours,
        "channel_order": list(channel_order),
    }


def build_facts(
    request: DecideRequest,
    now: datetime,
    zone: ZoneInfo,
    memberships: frozenset[str],
    reachable: tuple[str, ...],
    behaviour: Behaviour | None = None,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
    preferences: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`preferences`: the `preference_facts` of the message (none stored when None)."""
    behaviour = behaviour or Behaviour()
    message, recipient = request.message, request.recipient
    local = now.astimezone(zone)
    user: dict[str, Any] = {}
    for key, value in recipient.attributes.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequestError(f"recipient.attributes[{quote(key)}]", "must be a finite number")
        if isinstance(value, str | int | float | bool):
            user[key] = value
    user.update(
        id=recipient.user_id,
        timezone=recipient.timezone,
        locale=recipient.locale,
        local_hour=local.hour,
        local_minute=local.minute,
        local_weekday=_WEEKDAYS[local.weekday()],
        is_weekend=local.weekday() >= 5,
        allow_listed="allow" in memberships,
        deny_listed="deny" in memberships,
    )
    days = days_since_active(recipient.attributes, now)
    if behaviour.last_active_at is not None:
        seen = round(max(0.0, (now - behaviour.last_active_at).total_seconds() / 86400.0), 4)
        days = seen if days is None else min(days, seen)
    if days is not None:
        user["days_since_active"] = days
    return {
        "category": message.category,
        "message": {
            "id": message.id,
            "template": message.template,
            "has_deadline": message.not_after is not None,
        },
        "labels": dict(message.labels),
        "user": user,
        "reachable": {channel: channel in reachable for channel in known_channels()},
        "behaviour": {
            channel: _behaviour_facts(behaviour.stats(channel, now.timestamp(), half_life_s))
            for channel in behaviour.channels
        },
        "preferences": dict(preferences) if preferences is not None else preference_facts((), False, False),
    }


def _behaviour_facts(stats: ChannelStats) -> dict[str, float]:
    """A channel's decayed counts (rounded) and its smoothed engagement rate."""
    return {
        "sent": round(stats.sent, 4),
        "delivered": round(stats.delivered, 4),
        "opened": round(stats.opened, 4),
        "clicked": round(stats.clicked, 4),
        "converted": round(stats.converted, 4),
        "bounced": round(stats.bounced, 4),
        "engagement": round(stats.engagement, 4),
    }


def days_since_active(attributes: Mapping[str, Any], now: datetime) -> float | None:
    """Days (fractional, >= 0) since `attributes["last_active_at"]` (RFC 3339), None if absent."""
    raw = attributes.get("last_active_at")
    if raw in (None, ""):
        return None
    field = "recipient.attributes.last_active_at"
    if not isinstance(raw, str):
        raise InvalidRequestError(field, f"must be an RFC 3339 timestamp string, got {quote(raw)}")
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequestError(field, f"not an RFC 3339 timestamp: {quote(raw)}") from exc
    if when.tzinfo is None:
        raise InvalidRequestError(field, f"timestamp needs a UTC offset or Z: {quote(raw)}")
    return round(max(0.0, (now - when).total_seconds() / 86400.0), 4)
