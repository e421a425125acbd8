"""Per-user behaviour: when the person was last active, and what the engagement model has
learned about them: per channel, decayed counts of sends, deliveries, opens, clicks,
conversions (and their value), and per local time slot, sends and opens.

Fed by decisions (a decided message counts as sent on its channel and slot) and by
`ReportEvent` / the sender pool; read once per decision (facts `behaviour.*`,
`user.days_since_active`, and the learned channel choice). The population's sums of the same
counts (per category and channel, and per slot) are the prior a new person starts from.

Counts decay exponentially with the ruleset's half-life: each is stored as a pair (value, as of
instant) and read as value * 2^-(now - as_of) / half_life. An event older than the pair adds its
own decayed weight instead of moving it back in time, so the order events arrive in does not
matter. Each (message, kind, channel) counts once: the sender pool's delivery and a DELIVERED
receipt are one delivery, a repeated OPENED is one open. An event about a message this store
knows (decided within `MESSAGE_TTL_S`) is attributed to that decision's channel and slot; one
about a message it does not know counts a send as well, so a rate never exceeds 1.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

EventKind = Literal[
    "delivered", "opened", "clicked", "converted", "bounced", "failed", "unsubscribed", "active"
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
#: Events counted per channel (and "sent", counted by decisions).
CHANNEL_EVENTS: tuple[str, ...] = (
    "delivered",
    "opened",
    "clicked",
    "converted",
    "bounced",
    "failed",
    "unsubscribed",
)
COUNTED: tuple[str, ...] = ("sent", *CHANNEL_EVENTS, "value")
ENGAGEMENTS = frozenset({"opened", "clicked", "converted", "active"})
#: How long a decided message's record is kept for attributing and de-duplicating its events.
MESSAGE_TTL_S = 7 * 86400
DEFAULT_HALF_LIFE_S = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Decayed:
    """A decayed count: `value` as of `as_of_s` (epoch seconds)."""

    value: float = 0.0
    as_of_s: float = 0.0

    def at(self, now_s: float, half_life_s: float) -> float:
        if not self.value:
            return 0.0
        return self.value * math.pow(2.0, -max(0.0, now_s - self.as_of_s) / half_life_s)

    def add(self, amount: float, at_s: float, half_life_s: float) -> Decayed:
        """This count with `amount` added at `at_s` (a late event adds its decayed weight)."""
        if not self.value:
            return Decayed(amount, at_s)
        if at_s >= self.as_of_s:
            return Decayed(self.at(at_s, half_life_s) + amount, at_s)
        return Decayed(
            self.value + amount * math.pow(2.0, -(self.as_of_s - at_s) / half_life_s), self.as_of_s
        )

    def encode(self) -> str:
        return f"{self.value!r} {self.as_of_s!r}"

    @classmethod
    def decode(cls, raw: str | bytes) -> Decayed:
        """From "<value> <as of>"; a plain count (written before counts decayed) reads as a
        count as of any instant: undecayed."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        value, _, as_of = text.partition(" ")
        return cls(float(value), float(as_of) if as_of else math.inf)


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """Decayed counts of one channel as of the read instant."""

    sent: float = 0.0
    delivered: float = 0.0
    opened: float = 0.0
    clicked: float = 0.0
    converted: float = 0.0
    bounced: float = 0.0
    failed: float = 0.0
    unsubscribed: float = 0.0
    value: float = 0.0

    @property
    def tried(self) -> float:
        """Messages that count as attempts: sent, or at least delivered."""
        return max(self.sent, self.delivered)

    @property
    def engaged(self) -> float:
        """Messages opened or clicked (a click implies an open), never above `tried`."""
        return min(max(self.opened, self.clicked), self.tried)

    @property
    def engagement(self) -> float:
        """Smoothed share of attempts that were opened or clicked (0.5 with no data)."""
        return (self.engaged + 1) / (self.tried + 2)


_NO_STATS = ChannelStats()


def activity_key(at_s: float) -> str:
    """The count an ACTIVE event adds to: `active:u13` for 13:00-13:59 UTC. Events carry no
    timezone, so activity is kept by UTC hour and read in the person's local time when a
    decision (which knows the timezone) uses it."""
    return f"active:u{int(at_s // 3600) % 24:02d}"


def slot_of(local: datetime) -> str:
    """The time slot of a local instant: `wd07` (a weekday, 07:00-07:59) or `we21` (weekend)."""
    return f"{'we' if local.weekday() >= 5 else 'wd'}{local.hour:02d}"


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What is known of one person: counts keyed `<channel>:<kind>`, `slot:<slot>:<kind>` and
    `active:u<UTC hour>` (ACTIVE events)."""

    last_active_at: datetime | None = None
    counts: Mapping[str, Decayed] = field(default_factory=dict)
    #: stats already computed for this read (a decision asks for each channel several times)
    memo: dict[Any, ChannelStats] = field(default_factory=dict, compare=False, repr=False)

    def stats(
        self, channel: str, now_s: float | None = None, half_life_s: float = DEFAULT_HALF_LIFE_S
    ) -> ChannelStats:
        """`channel`'s counts decayed to `now_s` (undecayed, as stored, when None)."""
        key = (channel, now_s, half_life_s)
        known = self.memo.get(key)
        if known is not None:
            return known
        values = {}
        for kind in COUNTED:
            count = self.counts.get(f"{channel}:{kind}")
            if count is not None:
                values[kind] = count.value if now_s is None else count.at(now_s, half_life_s)
        stats = self.memo[key] = ChannelStats(**values) if values else _NO_STATS
        return stats

    @property
    def channels(self) -> list[str]:
        return sorted({key.split(":", 1)[0] for key in self.counts if not key.startswith("slot:")})


@dataclass(frozen=True, slots=True)
class EngagementEvent:
    user_id: str
    kind: EventKind
    channel: str | None
    at_s: float
    message_id: str = ""
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A decided message: counted as sent on its channel and slot, kept for attribution.
    `category` is the message's prior key: its category, `@` its segment value when the rules
    segment the prior (`marketing@app`). `now_s` is the decision's clock (the request clock
    when it carries one), which the memory store ages its records by; None: the store's own."""

    user_id: str
    message_id: str
    channel: str
    slot: str
    category: str
    at_s: float
    now_s: float | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What an event changed: nothing for a repeat; else the channel, slot and category it was
    attributed to, and whether a send was counted with it (a message the store did not know)."""

    counted: bool
    channel: str = ""
    slot: str = ""
    category: str = ""
    sent_too: bool = False


@dataclass(frozen=True, slots=True)
class Population:
    """The sums over everyone: keys `<category>:<channel>:<kind>` and `slot:<slot>:<kind>`.
    `memo` keeps what decisions derive from one copy (rates, the slot curve), so each is
    computed once per refresh, decayed to the instant of its first use: between refreshes
    (seconds) the decay is negligible."""

    counts: Mapping[str, Decayed] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def slot_values(self, now_s: float, half_life_s: float) -> Mapping[str, float]:
        """Every `slot:<slot>:<kind>` count, decayed (computed once per copy and half-life)."""
        key = ("slots", half_life_s)
        values = self.memo.get(key)
        if values is None:
            values = self.memo[key] = {
                k: c.at(now_s, half_life_s) for k, c in self.counts.items() if k.startswith("slot:")
            }
        return values

    def stats(self, category: str, channel: str, now_s: float, half_life_s: float) -> ChannelStats:
        values = {}
        for kind in COUNTED:
            count = self.counts.get(f"{category}:{channel}:{kind}")
            if count is not None:
                values[kind] = count.at(now_s, half_life_s)
        return ChannelStats(**values) if values else _NO_STATS


#: Joins a category and a segment value in a message's prior key: `marketing@app`.
SEGMENT_MARK = "@"


def prior_keys(prior_key: str) -> list[str]:
    """The population keys a message's counts go to: its category's, and its segment's when the
    key carries one (`marketing@app` -> `marketing@app`, `marketing`)."""
    category, mark, _ = prior_key.partition(SEGMENT_MARK)
    return [prior_key, category] if mark else [prior_key]


def population_updates(recorded: Recorded, kind: str, value: float) -> list[tuple[str, float]]:
    """The population counts one attributed event adds to: (key, amount)."""
    if not recorded.counted or not recorded.channel:
        return []
    updates = []
    for key in prior_keys(recorded.category or "-"):
        base = f"{key}:{recorded.channel}"
        updates.append((f"{base}:{kind}", 1.0))
        if kind == "converted" and value:
            updates.append((f"{base}:value", value))
        if recorded.sent_too:
            updates.append((f"{base}:sent", 1.0))
    if recorded.slot and kind == "opened":
        updates.append((f"slot:{recorded.slot}:opened", 1.0))
    if recorded.slot and recorded.sent_too:
        updates.append((f"slot:{recorded.slot}:sent", 1.0))
    return updates


class BehaviourStore(abc.ABC):
    """Implementations raise `StoreUnavailableError` when they cannot answer in time."""

    @abc.abstractmethod
    async def record(self, event: EngagementEvent, half_life_s: float) -> Recorded:
        """Count `event` once per (message, kind, channel); mark the person active at its instant
        when it is an engagement. Also adds it to the population counts."""

    @abc.abstractmethod
    async def decided(self, sent: SentMessage, half_life_s: float) -> bool:
        """Count `sent` as a send on its channel and slot (once per message id) and keep its
        record for `MESSAGE_TTL_S`. Returns False for a message id decided before."""

    async def note_sent(self, sent: SentMessage, half_life_s: float) -> None:
        """`decided`, for the decision path: a store may write it a moment later, in a batch
        with others (then it is written before any event about the same message is counted,
        and on close). Default: written now."""
        await self.decided(sent, half_life_s)

    async def settle(self, user_id: str | None = None) -> None:
        """Write the sends `note_sent` keeps waiting: of `user_id`, or all. Reads of this store
        settle first, so a process always reads its own writes. Default: none wait."""
        return None

    @abc.abstractmethod
    async def get(self, user_id: str) -> Behaviour:
        """The user's behaviour; an unknown user has an empty `Behaviour`."""

    @abc.abstractmethod
    async def population(self) -> Population:
        """The population's counts (read by the prior cache, not per decision)."""

    async def close(self) -> None:
        """Release connections. Default: nothing to release."""
        return None
