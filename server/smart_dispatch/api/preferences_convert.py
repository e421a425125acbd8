"""Protobuf <-> domain conversion of preferences (`Preferences`, `ChannelConsent`, `LocalWindow`).

Parsing errors name the field (`preferences.quiet_hours.start: expected HH:MM`); the checks
against the rules (known categories and channels, required categories) are the preference
centre's (`preferences/centre.py`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time

from google.protobuf import timestamp_pb2

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.api.convert import timestamp
from smart_dispatch.decide.validate import MAX_CHANNEL_ENTRIES
from smart_dispatch.errors import InvalidRequestError, quote
from smart_dispatch.preferences.base import Consent, LocalWindow, Preferences
from smart_dispatch.preferences.centre import MAX_CONSENTS

_HH_MM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
#: Characters of a category or channel in a consent, at most (checked before anything else).
_MAX_NAME_LENGTH = 64


def preferences_from(msg: pb.Preferences) -> Preferences:
    """The domain preferences of `msg`. Raises `InvalidRequestError` naming the field."""
    if len(msg.consents) > MAX_CONSENTS:
        raise InvalidRequestError(
            "preferences.consents", f"more than {MAX_CONSENTS} entries ({len(msg.consents):,})"
        )
    if len(msg.channel_order) > MAX_CHANNEL_ENTRIES:
        raise InvalidRequestError(
            "preferences.channel_order",
            f"more than {MAX_CHANNEL_ENTRIES} entries ({len(msg.channel_order):,})",
        )
    consents = []
    for index, consent in enumerate(msg.consents):
        for name in ("category", "channel"):
            value = getattr(consent, name)
            if len(value) > _MAX_NAME_LENGTH:
                raise InvalidRequestError(
                    f"preferences.consents[{index}].{name}", f"longer than {_MAX_NAME_LENGTH} characters"
                )
        consents.append(Consent(consent.category, consent.channel, consent.allowed))
    mute_until = None
    if msg.HasField("mute_until"):
        mute_until = _instant(msg.mute_until, "preferences.mute_until")
    quiet_hours = None
    if msg.HasField("quiet_hours"):
        window = msg.quiet_hours
        quiet_hours = LocalWindow(
            _clock(window.start, "preferences.quiet_hours.start"),
            _clock(window.end, "preferences.quiet_hours.end"),
        )
    return Preferences(
        consents=tuple(consents),
        mute_until=mute_until,
        quiet_hours=quiet_hours,
        channel_order=tuple(msg.channel_order),
        locale=msg.locale,
    )


def preferences_message(preferences: Preferences) -> pb.Preferences:
    out = pb.Preferences(
        consents=[
            pb.ChannelConsent(category=c.category, channel=c.channel, allowed=c.allowed)
            for c in preferences.consents
        ],
        channel_order=list(preferences.channel_order),
        locale=preferences.locale,
    )
    if preferences.mute_until is not None:
        out.mute_until.CopyFrom(timestamp(preferences.mute_until))
    if preferences.quiet_hours is not None:
        window = preferences.quiet_hours
        out.quiet_hours.CopyFrom(pb.LocalWindow(start=f"{window.start:%H:%M}", end=f"{window.end:%H:%M}"))
    return out


def get_response(preferences: Preferences) -> pb.GetPreferencesResponse:
    out = pb.GetPreferencesResponse(preferences=preferences_message(preferences))
    if preferences.updated_at is not None:
        out.updated_at.CopyFrom(timestamp(preferences.updated_at))
    return out


def update_response(preferences: Preferences) -> pb.UpdatePreferencesResponse:
    out = pb.UpdatePreferencesResponse(preferences=preferences_message(preferences))
    if preferences.updated_at is not None:
        out.updated_at.CopyFrom(timestamp(preferences.updated_at))
    return out


def _clock(text: str, field: str) -> time:
    match = _HH_MM.fullmatch(text)
    if match is None:
        raise InvalidRequestError(field, f"expected HH:MM (00:00 to 23:59), got {quote(text)}")
    return time(int(match[1]), int(match[2]))


def _instant(ts: timestamp_pb2.Timestamp, field: str) -> datetime:
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequestError(field, f"timestamp out of range: {exc}") from exc
