"""What a person chose about their messages, and the store that keeps it.

    consents        opt-in / opt-out per category x channel; either may be "*" (every one)
    mute_until      nothing but required categories goes before this instant
    quiet_hours     a personal window ("22:00"-"07:00", local clock; wraps midnight) in which
                    messages that do not bypass quiet hours wait
    channel_order   channels in the order the person prefers them
    locale          a BCP 47 tag, e.g. "zh-CN"

Kept with them, though not a choice of the person: the addresses a provider said are dead
(`invalid_addresses`: an unregistered push token), as (channel, `address_digest`) pairs, one per
channel. Every decision reads the preferences anyway, so it skips such an address at no extra
cost: a channel whose address in the request has that digest is not reachable; another address
for the channel (the app reinstalled: a new token) is. Marking one does not change `updated_at`,
and no update of the preferences removes it.

Which consent applies to (category, channel): of the entries matching it, the most specific
(naming both > naming one > "*"/"*"); when a category-wide and a channel-wide entry disagree,
the opt-out stands. No matching entry: allowed. So an explicit opt-in overrides a broader
opt-out ({marketing, sms, in} beats {marketing, *, out}), and an opt-out of one channel beats
a broader opt-in.

Required categories (rules file, `categories:`) ignore opt-outs and the mute: the decision
pipeline decides that, not the store, which keeps whatever it is given.

Stores: memory.py (`memory://`), redis.py (one hash per person). Implementations raise
`StoreUnavailableError` when they cannot answer in time, `StoreError` on other failures.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time

from smart_dispatch.domain import known_channels

WILDCARD = "*"
#: The parts of `Preferences` an update may replace (the API's `update_mask` paths).
PATHS: tuple[str, ...] = ("consents", "mute_until", "quiet_hours", "channel_order", "locale")


@dataclass(frozen=True, slots=True)
class Consent:
    """`allowed` False: opted out of `category` on `channel`; True: opted in."""

    category: str
    channel: str
    allowed: bool

    @property
    def specificity(self) -> int:
        """2 when it names both, 1 when it names one, 0 for "*"/"*"."""
        return (self.category != WILDCARD) + (self.channel != WILDCARD)

    def matches(self, category: str, channel: str) -> bool:
        return self.category in (category, WILDCARD) and self.channel in (channel, WILDCARD)


@dataclass(frozen=True, slots=True)
class LocalWindow:
    """From `start` to `end` on the person's local clock; wraps midnight when start > end."""

    start: time
    end: time


@dataclass(frozen=True, slots=True)
class Preferences:
    """A person's preferences. `consents` are sorted by (category, channel), one per pair;
    instants are UTC with millisecond precision (as stored); `updated_at` is None when nothing
    is stored."""

    consents: tuple[Consent, ...] = ()
    mute_until: datetime | None = None
    quiet_hours: LocalWindow | None = None
    channel_order: tuple[str, ...] = ()
    locale: str = ""
    updated_at: datetime | None = None
    #: (channel, `address_digest`) of dead addresses, sorted, one per channel (module docstring)
    invalid_addresses: tuple[tuple[str, str], ...] = ()

    def allows(self, category: str, channel: str) -> bool:
        """Whether the consents allow `category` on `channel` (see the module docstring)."""
        best, allowed = -1, True
        for consent in self.consents:
            if not consent.matches(category, channel):
                continue
            if consent.specificity > best:
                best, allowed = consent.specificity, consent.allowed
            elif consent.specificity == best:
                allowed = allowed and consent.allowed
        return allowed

    def opted_out(self, category: str, channels: Iterable[str] | None = None) -> tuple[str, ...]:
        """The `channels` (default: every known one) the person opted out of for `category`,
        in their order."""
        if not self.consents:
            return ()
        candidates = known_channels() if channels is None else channels
        return tuple(channel for channel in candidates if not self.allows(category, channel))

    def muted(self, at: datetime) -> bool:
        return self.mute_until is not None and at < self.mute_until


NO_PREFERENCES = Preferences()


def address_digest(address: str) -> str:
    """What is kept of an address known to be dead: 128 bits of its SHA-256, in hex. Pure."""
    return hashlib.sha256(address.encode()).hexdigest()[:32]


def with_invalid_address(current: Preferences, channel: str, digest: str) -> Preferences:
    """`current` with `digest` as `channel`'s dead address (replacing the channel's previous
    one); `updated_at` stays. Pure: the memory store's write, the reference of the Redis one."""
    marks = dict(current.invalid_addresses)
    marks[channel] = digest
    return replace(current, invalid_addresses=tuple(sorted(marks.items())))


def to_millis(at: datetime) -> datetime:
    """`at` in UTC, cut to whole milliseconds (what every store keeps)."""
    at = at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def sorted_consents(consents: Iterable[Consent]) -> tuple[Consent, ...]:
    """One consent per (category, channel), the last given winning, sorted."""
    unique = {(c.category, c.channel): c for c in consents}
    return tuple(unique[key] for key in sorted(unique))


def merged(current: Preferences, given: Preferences, paths: Collection[str], at: datetime) -> Preferences:
    """`current` with the `paths` of `given` (all of them when `paths` is empty), changed at
    `at`. Pure: the memory store's update, and the reference of the Redis one."""
    paths = paths or PATHS
    changes = {path: getattr(given, path) for path in paths}
    if "consents" in changes:
        changes["consents"] = sorted_consents(given.consents)
    if changes.get("mute_until") is not None:
        changes["mute_until"] = to_millis(given.mute_until)  # type: ignore[arg-type]
    return replace(current, **changes, updated_at=to_millis(at))


def with_consent(current: Preferences, consent: Consent, at: datetime) -> Preferences:
    """`current` with `consent` added (replacing the entry of its category and channel)."""
    consents = sorted_consents((*current.consents, consent))
    return replace(current, consents=consents, updated_at=to_millis(at))


class PreferenceStore(abc.ABC):
    """Per-person preferences, shared by every sidecar on the store. A decision reads them in
    its user-state round trip (user_state.py), not through `get`."""

    @abc.abstractmethod
    async def get(self, user_id: str) -> Preferences:
        """The stored preferences; `NO_PREFERENCES` for a person with none."""

    @abc.abstractmethod
    async def update(
        self, user_id: str, preferences: Preferences, paths: Collection[str], at: datetime
    ) -> Preferences:
        """Replace the `paths` (`PATHS`; empty: all) of the stored preferences with those of
        `preferences`, atomically, and set `updated_at` to `at`. Returns them as stored."""

    @abc.abstractmethod
    async def set_consent(self, user_id: str, consent: Consent, at: datetime) -> Preferences:
        """Add `consent`, replacing the entry of its category and channel, atomically (the
        other consents stay). Returns the preferences as stored."""

    @abc.abstractmethod
    async def mark_invalid_address(self, user_id: str, channel: str, digest: str) -> None:
        """Record `digest` (`address_digest`) as the dead address of `channel` for the person,
        replacing the channel's previous one (`with_invalid_address`)."""

    async def close(self) -> None:
        """Release connections. Default: nothing to release."""
        return None
