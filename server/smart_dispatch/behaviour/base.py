"""Per-user behaviour: when the person was last active and how they engage on each channel.

Fed by `ReportEvent` (delivery receipts, opens, clicks, bounces, activity) and by the sender
pool; read once per decision to derive facts (`behaviour.*`, `user.days_since_active`) and to
rank channels by learned engagement.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, get_args

EventKind = Literal["delivered", "opened", "clicked", "bounced", "failed", "unsubscribed", "active"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
#: Events counted per channel.
CHANNEL_EVENTS: tuple[str, ...] = ("delivered", "opened", "clicked", "bounced", "failed", "unsubscribed")


@dataclass(frozen=True, slots=True)
class ChannelStats:
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    bounced: int = 0
    failed: int = 0
    unsubscribed: int = 0

    @property
    def engagement(self) -> float:
        """Smoothed share of deliveries that were opened or clicked (0.5 with no data)."""
        return (self.opened + self.clicked + 1) / (self.delivered + 2)


_NO_STATS = ChannelStats()


@dataclass(frozen=True, slots=True)
class Behaviour:
    last_active_at: datetime | None = None
    channels: Mapping[str, ChannelStats] = field(default_factory=dict)

    def stats(self, channel: str) -> ChannelStats:
        return self.channels.get(channel, _NO_STATS)


class BehaviourStore(abc.ABC):
    """Implementations raise `StoreUnavailableError` when they cannot answer in time."""

    @abc.abstractmethod
    async def record(self, user_id: str, event: EventKind, channel: str | None, at: datetime) -> None:
        """Count `event` for `channel` (None for `active`); every event also marks the user
        active at `at` when it is an engagement (opened, clicked, active)."""

    @abc.abstractmethod
    async def get(self, user_id: str) -> Behaviour:
        """The user's behaviour; an unknown user has an empty `Behaviour`."""

    async def close(self) -> None:
        """Release connections. Default: nothing to release."""
        return None


ENGAGEMENTS = frozenset({"opened", "clicked", "active"})
