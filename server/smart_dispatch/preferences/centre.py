"""The preference centre: reading and changing a person's preferences against the current rules.

Three ways in, one set of checks:

- `update` (UpdatePreferences, the console): validated, field by field; opting out of a
  required category is a `RequiredCategoryError` (FAILED_PRECONDITION) naming it;
- `unsubscribed` (an UNSUBSCRIBED event): the opt-out of the event's message's category on the
  event's channel, unless the category is required (then nothing is written);
- `unsubscribe` (the one-click link of an e-mail): the token's opt-out, after it is verified.

Errors name the API's fields (`preferences.consents[2].channel`), as `decide/validate.py` does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection
from datetime import UTC, datetime

from smart_dispatch.behaviour.base import SEGMENT_MARK
from smart_dispatch.decide.validate import MAX_CHANNEL_ENTRIES, MAX_LOCALE_LENGTH, check_id
from smart_dispatch.dispatch.store import DispatchStore
from smart_dispatch.domain import known_channels
from smart_dispatch.errors import ConflictError, InvalidRequestError, RequiredCategoryError, quote
from smart_dispatch.preferences.base import PATHS, WILDCARD, Consent, Preferences, PreferenceStore
from smart_dispatch.preferences.unsubscribe_token import UnsubscribeTokens
from smart_dispatch.rules.model import Ruleset

log = logging.getLogger(__name__)

#: Consents one person may store.
MAX_CONSENTS = 256
_CATEGORY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
#: A BCP 47 tag, loosely: a language and subtags of letters and digits (`zh-CN`, `sr-Latn-RS`).
_LOCALE = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*")


class PreferenceCentre:
    """Over `store`, with `ruleset()` the rules now in force (categories, required ones) and
    `dispatches` to find an event's message. Without `tokens`, unsubscribe links are off."""

    def __init__(
        self,
        store: PreferenceStore,
        ruleset: Callable[[], Ruleset],
        dispatches: DispatchStore,
        tokens: UnsubscribeTokens | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self._ruleset = ruleset
        self._dispatches = dispatches
        self._tokens = tokens
        self._clock = clock

    def required(self, category: str) -> bool:
        """Whether the rules in force mark `category` required."""
        return category in self._ruleset().required_categories

    async def get(self, user_id: str) -> Preferences:
        return await self.store.get(check_id(user_id, "user_id"))

    async def update(self, user_id: str, preferences: Preferences, paths: Collection[str]) -> Preferences:
        """Replace the `paths` (empty: all) of the person's preferences. Raises
        `InvalidRequestError` naming the field, `RequiredCategoryError`."""
        check_id(user_id, "user_id")
        for path in paths:
            if path not in PATHS:
                raise InvalidRequestError(
                    "update_mask", f"unknown path {quote(path)}; known: {', '.join(PATHS)}"
                )
        paths = frozenset(paths) or frozenset(PATHS)
        self.validate(preferences, paths)
        return await self.store.update(user_id, preferences, paths, self._clock())

    def validate(self, preferences: Preferences, paths: Collection[str] = PATHS) -> None:
        """Check the `paths` of `preferences` against the rules in force (see `update`)."""
        ruleset = self._ruleset()
        if "consents" in paths:
            _check_consents(preferences.consents, ruleset)
        if "quiet_hours" in paths and preferences.quiet_hours is not None:
            window = preferences.quiet_hours
            if window.start == window.end:
                raise InvalidRequestError("preferences.quiet_hours", "start and end must differ")
        if "channel_order" in paths:
            _check_channel_order(preferences.channel_order)
        if "locale" in paths:
            locale = preferences.locale
            if len(locale) > MAX_LOCALE_LENGTH:
                raise InvalidRequestError(
                    "preferences.locale", f"longer than {MAX_LOCALE_LENGTH} characters ({len(locale):,})"
                )
            if locale and not _LOCALE.fullmatch(locale):
                raise InvalidRequestError(
                    "preferences.locale", f"{quote(locale)} is not a BCP 47 language tag (e.g. zh-CN)"
                )

    async def opt_out(self, user_id: str, category: str, channel: str) -> Preferences:
        """Store the opt-out of `category` on `channel` (other consents stay). Raises
        `RequiredCategoryError` for a required category."""
        if self.required(category):
            raise RequiredCategoryError(category)
        return await self.store.set_consent(user_id, Consent(category, channel, False), self._clock())

    async def unsubscribed(
        self, user_id: str, message_id: str, channel: str, category: str = ""
    ) -> Preferences | None:
        """An UNSUBSCRIBED event about `message_id` on `channel`: the opt-out of its category
        (`category`, a prior key `marketing@segment` too, when the caller knows it; else the
        dispatch of that message). None when nothing was written: the category is required,
        or the message is not known."""
        category = category.partition(SEGMENT_MARK)[0] or await self._category_of(user_id, message_id)
        if not category:
            log.info("unsubscribed from unknown message %r: no opt-out written", message_id)
            return None
        if self.required(category):
            log.info("unsubscribed from required category %r: no opt-out written", category)
            return None
        return await self.store.set_consent(user_id, Consent(category, channel, False), self._clock())

    async def unsubscribe(self, token: str) -> Preferences:
        """Verify `token` and store its opt-out; the person's preferences as stored. Raises
        `UnsubscribeTokenError` (malformed, forged, expired), `RequiredCategoryError` (the rules
        made the category required since), `ConflictError` when links are off."""
        if self._tokens is None:
            raise ConflictError("unsubscribe links are off: this sidecar has no SD_UNSUBSCRIBE_SECRET")
        granted = self._tokens.verify(token)
        return await self.opt_out(granted.user_id, granted.category, granted.channel)

    async def _category_of(self, user_id: str, message_id: str) -> str:
        record = await self._dispatches.get_by_message(message_id)
        if record is None or record.recipient.user_id != user_id:
            return ""
        return record.message.category


def _check_consents(consents: Collection[Consent], ruleset: Ruleset) -> None:
    if len(consents) > MAX_CONSENTS:
        raise InvalidRequestError(
            "preferences.consents", f"more than {MAX_CONSENTS} entries ({len(consents):,})"
        )
    seen: dict[tuple[str, str], int] = {}
    for index, consent in enumerate(consents):
        field = f"preferences.consents[{index}]"
        category, channel = consent.category, consent.channel
        if not category:
            raise InvalidRequestError(f"{field}.category", 'is required (a category, or "*" for all)')
        if category != WILDCARD and not _CATEGORY.fullmatch(category):
            raise InvalidRequestError(
                f"{field}.category", f"{quote(category)} is not a category name (letters, digits, _ . -)"
            )
        if category != WILDCARD and ruleset.categories and category not in ruleset.categories:
            raise InvalidRequestError(
                f"{field}.category",
                f"unknown category {quote(category)}; the loaded rules cover: "
                f"{', '.join(sorted(ruleset.categories))}",
            )
        if channel != WILDCARD and channel not in known_channels():
            raise InvalidRequestError(
                f"{field}.channel",
                f'unknown channel {quote(channel)}; known: {", ".join(known_channels())}, or "*"',
            )
        if (category, channel) in seen:
            first = seen[(category, channel)]
            raise InvalidRequestError(field, f"a second entry for {category}/{channel} (first: [{first}])")
        seen[(category, channel)] = index
        if not consent.allowed and category in ruleset.required_categories:
            raise RequiredCategoryError(category, field)


def _check_channel_order(channels: Collection[str]) -> None:
    field = "preferences.channel_order"
    if len(channels) > MAX_CHANNEL_ENTRIES:
        raise InvalidRequestError(field, f"more than {MAX_CHANNEL_ENTRIES} entries ({len(channels):,})")
    seen: set[str] = set()
    for channel in channels:
        if channel not in known_channels():
            raise InvalidRequestError(
                field, f"unknown channel {quote(channel)}; known: {', '.join(known_channels())}"
            )
        if channel in seen:
            raise InvalidRequestError(field, f"{channel!r} appears twice")
        seen.add(channel)
