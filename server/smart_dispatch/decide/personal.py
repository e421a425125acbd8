"""What a person's stored preferences impose on one message. Pure.

- opted-out channels are not reachable (never chosen, never a fallback);
- a mute holds the message until it ends; personal quiet hours defer it like the rules' quiet
  hours do (a rule's `bypass_quiet_hours` exempts from both);
- the channel order ranks channels as the request's `recipient.preferred` does, before it;
- a channel whose address a provider said is dead (`Preferences.invalid_addresses`) is not
  reachable while the request gives that same address, required category or not.

A required category (rules file) ignores opt-outs and the mute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from smart_dispatch.decide.facts import preference_facts
from smart_dispatch.decide.timing import in_window
from smart_dispatch.preferences.base import NO_PREFERENCES, Preferences
from smart_dispatch.rules.model import QuietHours


@dataclass(frozen=True, slots=True)
class PersonalTerms:
    """`opted_out`: channels not to use; `mute_until`: set while a mute holds the message."""

    opted_out: tuple[str, ...] = ()
    mute_until: datetime | None = None
    quiet_hours: QuietHours | None = None
    channel_order: tuple[str, ...] = ()
    locale: str = ""
    #: the person's dead addresses (`Preferences.invalid_addresses`): skipped even when required
    invalid_addresses: tuple[tuple[str, str], ...] = ()

    def preferred(self, requested: Sequence[str]) -> tuple[str, ...]:
        """The person's channel order, then the request's `recipient.preferred` (no repeats)."""
        return tuple(dict.fromkeys((*self.channel_order, *requested)))

    def facts(self, now: datetime, zone: ZoneInfo) -> dict[str, Any]:
        window = self.quiet_hours
        local = now.astimezone(zone).time().replace(tzinfo=None)
        inside = window is not None and in_window(local, window.start, window.end)
        return preference_facts(
            self.opted_out, self.mute_until is not None, inside, self.channel_order, self.locale
        )


NO_TERMS = PersonalTerms()


def personal_terms(preferences: Preferences, category: str, required: bool, now: datetime) -> PersonalTerms:
    """The terms `preferences` set for a message of `category` decided at `now`."""
    if preferences is NO_PREFERENCES:  # most people: nothing to work out
        return NO_TERMS
    window = preferences.quiet_hours
    quiet = None if window is None else QuietHours(window.start, window.end, "defer")
    invalid = preferences.invalid_addresses
    if required:
        return PersonalTerms((), None, quiet, preferences.channel_order, preferences.locale, invalid)
    return PersonalTerms(
        preferences.opted_out(category),
        preferences.mute_until if preferences.muted(now) else None,
        quiet,
        preferences.channel_order,
        preferences.locale,
        invalid,
    )
