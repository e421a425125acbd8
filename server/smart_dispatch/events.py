"""Reported events (delivery receipts, engagement, activity) and what they change.

- every event updates the person's behaviour (per-channel counts, last activity);
- `bounced` / `failed` release the caps the message reserved, so a message that never reached
  the person does not count against their frequency caps;
- `unsubscribed` writes the person's opt-out of the message's category on the event's channel
  (unless the rules mark the category required): `preferences/centre.py`;
- an address a provider said is dead (the sender pool calls `address_invalid`) is recorded with
  the person's preferences, so their next decisions skip it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from smart_dispatch.behaviour.base import BehaviourStore, EngagementEvent, EventKind
from smart_dispatch.counters.base import CounterStore
from smart_dispatch.decide.validate import MAX_ID_LENGTH, check_id
from smart_dispatch.domain import known_channels
from smart_dispatch.errors import InvalidRequestError, quote
from smart_dispatch.preferences.base import address_digest
from smart_dispatch.preferences.centre import PreferenceCentre
from smart_dispatch.rules.active import ActiveRules

REFUNDING: frozenset[str] = frozenset({"bounced", "failed"})


@dataclass(frozen=True, slots=True)
class ReportedEvent:
    user_id: str
    kind: EventKind
    at: datetime
    message_id: str = ""
    channel: str = ""
    value: float = 0.0


class EventRecorder:
    def __init__(
        self,
        rules: ActiveRules,
        counters: CounterStore,
        behaviour: BehaviourStore,
        preferences: PreferenceCentre | None = None,
    ) -> None:
        self._rules = rules
        self._counters = counters
        self._behaviour = behaviour
        self._preferences = preferences

    async def report(self, event: ReportedEvent) -> bool:
        """Apply `event`; True when caps were refunded. Raises `InvalidRequestError`."""
        validate_event(event)
        engagement = EngagementEvent(
            event.user_id,
            event.kind,
            event.channel or None,
            event.at.timestamp(),
            event.message_id,
            event.value,
        )
        recorded = await self._behaviour.record(
            engagement, self._rules.current().ruleset.learning.half_life_s
        )
        if event.kind == "unsubscribed" and self._preferences is not None:
            await self._preferences.unsubscribed(
                event.user_id, event.message_id, event.channel, recorded.category
            )
        if event.kind not in REFUNDING:
            return False
        await self.refund(event.user_id, event.message_id)
        return True

    async def refund(self, user_id: str, message_id: str) -> None:
        """Release every cap `message_id` holds for `user_id` (a no-op for caps it never held)."""
        caps = list(self._rules.current().ruleset.caps.values())
        await self._counters.refund(user_id, message_id, caps)

    async def address_invalid(self, user_id: str, channel: str, address: str) -> None:
        """A provider said `address` on `channel` is dead (an unregistered push token): it is
        recorded with the person's preferences, and their next decisions skip it while a
        request gives that address (`preferences/base.py`). Nothing without a preference centre."""
        if self._preferences is not None and address:
            await self._preferences.store.mark_invalid_address(user_id, channel, address_digest(address))


def validate_event(event: ReportedEvent) -> None:
    check_id(event.user_id, "user_id")
    if event.kind == "active":
        return
    if len(event.message_id) > MAX_ID_LENGTH or not event.message_id.strip():
        check_id(event.message_id, "message_id")  # says which
        raise InvalidRequestError("message_id", f"is required for {event.kind} events")
    known = known_channels()
    if event.channel not in known:
        raise InvalidRequestError(
            "channel", f"unknown channel {quote(event.channel)}; known: {', '.join(known)}"
        )
