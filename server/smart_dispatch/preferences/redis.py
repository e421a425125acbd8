"""Preferences in Redis: one hash per person, `<prefix>:{u:<user>}:prefs` (the person's hash tag,
so it shares a Cluster slot with their caps and behaviour, and a decision reads it in the same
round trip: `stores.redis.RedisUserStateReader`). Key schema and the write: preferences.lua, one
script call per change, atomic (concurrent updates of different parts never lose one another).

Failure modes: `StoreUnavailableError` / `StoreError` as for every Redis store.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from smart_dispatch._redis_guard import LuaRunner, LuaScript, checked_prefix, guarded
from smart_dispatch.preferences.base import (
    NO_PREFERENCES,
    PATHS,
    Consent,
    LocalWindow,
    Preferences,
    PreferenceStore,
    sorted_consents,
    to_millis,
)

PREFERENCES = LuaScript.load("smart_dispatch.preferences", "preferences.lua")
_CONSENT = "c:"
_INVALID = "bad:"  # bad:<channel> -> the digest of its dead address (preferences/base.py)


class RedisPreferenceStore(PreferenceStore):
    def __init__(self, client: Redis | RedisCluster, *, prefix: str = "sd", timeout_s: float = 0.25) -> None:
        self._client = client
        self._prefix = checked_prefix(prefix)
        self._timeout_s = timeout_s
        self._lua = LuaRunner.of(client, timeout_s)

    def key(self, user_id: str) -> str:
        return f"{self._prefix}:{{u:{user_id}}}:prefs"

    async def get(self, user_id: str) -> Preferences:
        async with guarded(self._timeout_s):
            raw = await self._client.hgetall(self.key(user_id))
        return decode_preferences(raw.items())

    async def update(
        self, user_id: str, preferences: Preferences, paths: Collection[str], at: datetime
    ) -> Preferences:
        paths = paths or PATHS
        fields = encode_fields(preferences, paths)
        return await self._write(user_id, at, "consents" in paths, fields)

    async def set_consent(self, user_id: str, consent: Consent, at: datetime) -> Preferences:
        return await self._write(user_id, at, False, [_consent_field(consent)])

    async def mark_invalid_address(self, user_id: str, channel: str, digest: str) -> None:
        # One field, no script: updated_ms stays (not a choice of the person).
        async with guarded(self._timeout_s):
            await self._client.hset(self.key(user_id), f"{_INVALID}{channel}", digest)

    async def _write(
        self, user_id: str, at: datetime, replace_consents: bool, fields: Sequence[tuple[str, str]]
    ) -> Preferences:
        args: list[str | int] = [_millis(at), "1" if replace_consents else "0"]
        for name, value in fields:
            args += [name, value]
        async with guarded(self._timeout_s):
            flat = await self._lua.run(PREFERENCES, [self.key(user_id)], args)
        return decode_preferences_flat(flat)


def encode_fields(preferences: Preferences, paths: Collection[str]) -> list[tuple[str, str]]:
    """The hash fields that store the `paths` of `preferences` ("" deletes a field)."""
    fields: list[tuple[str, str]] = []
    if "consents" in paths:
        fields += [_consent_field(c) for c in sorted_consents(preferences.consents)]
    if "mute_until" in paths:
        mute = preferences.mute_until
        fields.append(("mute_until", "" if mute is None else str(_millis(mute))))
    if "quiet_hours" in paths:
        window = preferences.quiet_hours
        fields.append(("quiet_hours", "" if window is None else f"{window.start:%H:%M}-{window.end:%H:%M}"))
    if "channel_order" in paths:
        fields.append(("channel_order", ",".join(preferences.channel_order)))
    if "locale" in paths:
        fields.append(("locale", preferences.locale))
    return fields


def decode_preferences(pairs: Iterable[tuple[Any, Any]]) -> Preferences:
    """`Preferences` from the hash's (field, value) pairs; `NO_PREFERENCES` for none."""
    consents: list[Consent] = []
    values: dict[str, Any] = {}
    invalid: list[tuple[str, str]] = []
    for field_b, value_b in pairs:
        field, value = _text(field_b), _text(value_b)
        if field.startswith(_CONSENT):
            category, _, channel = field[len(_CONSENT) :].partition(":")
            consents.append(Consent(category, channel, value == "1"))
        elif field.startswith(_INVALID):
            invalid.append((field[len(_INVALID) :], value))
        elif field in ("mute_until", "updated_ms"):
            values["updated_at" if field == "updated_ms" else field] = _instant(value)
        elif field == "quiet_hours":
            start, _, end = value.partition("-")
            values[field] = LocalWindow(time.fromisoformat(start), time.fromisoformat(end))
        elif field == "channel_order":
            values[field] = tuple(value.split(",")) if value else ()
        elif field == "locale":
            values[field] = value
    if not consents and not values and not invalid:
        return NO_PREFERENCES
    return Preferences(consents=sorted_consents(consents), invalid_addresses=tuple(sorted(invalid)), **values)


def decode_preferences_flat(flat: Sequence[Any] | Mapping[Any, Any]) -> Preferences:
    """`Preferences` from the hash as a script's HGETALL returns it (field, value, ...); a
    RESP3 client may hand the reply over as a mapping."""
    if isinstance(flat, Mapping):
        return decode_preferences(flat.items())
    pairs = iter(flat)
    return decode_preferences(zip(pairs, pairs, strict=False))


def _consent_field(consent: Consent) -> tuple[str, str]:
    return f"{_CONSENT}{consent.category}:{consent.channel}", "1" if consent.allowed else "0"


def _millis(at: datetime) -> int:
    return round(to_millis(at).timestamp() * 1000)


def _instant(millis: str) -> datetime:
    whole, rest = divmod(int(millis), 1000)
    return datetime.fromtimestamp(whole, UTC).replace(microsecond=rest * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
