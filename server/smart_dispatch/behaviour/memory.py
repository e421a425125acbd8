"""The embedded behaviour store (`memory://`): the reference for the semantics of base.py.

**Memory is bounded by the people and the messages of a window, not by the traffic so far.**
What it keeps, and how long (as on Redis, where the keys carry the same TTLs):

- a decided message's record (its channel, slot and category, and which events were counted
  for it) for `MESSAGE_TTL_S` (7 days) after it was written: one `bytes` (~55 bytes) under a
  key string, ~180 bytes in all;
- a person's counts for `ttl_s` (default 180 days, Redis' `behaviour_ttl_s`) after their last
  write: one `bytes` per person (`_Person`: each count's value and as-of instant as doubles
  and the code of its name, 18 bytes; a count whose value is exactly 1.0, as most are, keeps
  only its instant, 10 bytes), so ~200-500 bytes a person with its key, and no Python object
  per count; a write decodes it into `array`s and encodes it back;
- the population's counts (a few hundred keys), and two tables of the names records and counts
  use (count names such as `email:opened` or `slot:wd07:sent`: channels x kinds, slots and
  hours, at most 65,536; a record's channel, slot, category as the prior keys it and
  `<kind>:<channel>` flags), bounded by the vocabulary, not by people or traffic.

Nothing per person or per message is an object the cyclic GC tracks (`bytes` and `str` only).

Expired entries read as absent at once, and are removed by sweeps: records are written in the
order they expire, so every `PREFIX_EVERY` writes the expired ones at the front go (the pass
stops at the first live record); and a full pass over records and people runs after as many
writes as the previous one left entries (at least `sweep_min`), for people and for anything
written out of order. Both cost O(1) per write amortised; records stay within
`PREFIX_EVERY` writes of their TTL.

**The store's clock** ages records: the decision instant of the latest send it was told of (the
request clock when decisions carry one, `SentMessage.now_s`) plus the real time since; the real
clock before any. So a simulation or a replay months in the past ages its records by its own
days, and a live sidecar by the real clock. A sidecar deciding on two clocks at once (live
traffic and `DecideRequest.at` elsewhere in time, which README says not to do) ages them by
whichever it heard last.
"""

from __future__ import annotations

import math
import struct
import time
from array import array
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import repeat

from smart_dispatch.behaviour.base import (
    CHANNEL_EVENTS,
    ENGAGEMENTS,
    MESSAGE_TTL_S,
    Behaviour,
    BehaviourStore,
    Decayed,
    EngagementEvent,
    Population,
    Recorded,
    SentMessage,
    activity_key,
    population_updates,
    prior_keys,
)

#: How long a person's counts are kept after their last write (as Redis' key TTL).
PERSON_TTL_S = 180 * 86400
#: A full sweep runs after as many writes as the previous one left entries, and never sooner.
SWEEP_MIN = 10_000
#: Every this many writes the records that expired first are dropped.
PREFIX_EVERY = 1024

# A person: see _Person. Their first two doubles: last active, last written.
_ACTIVE, _WRITTEN, _HEAD = 0, 1, 16
_TWO_DOUBLES = struct.Struct("=dd")
_UINT16 = struct.Struct("=H")
# A message's record: kept until (store clock), the codes of its channel, slot and category
# ("" when it was not decided here), then the codes of the flags counted for it.
_RECORD = struct.Struct("=dIII")
_DOUBLE = struct.Struct("=d")
_SENT = "sent:"  # the flag of a send counted by an event about a message not decided here
if (array("I").itemsize, array("H").itemsize) != (4, 2):  # pragma: no cover - as on every platform
    raise ImportError("behaviour.memory needs 4-byte array('I') and 2-byte array('H') items")


class MemoryBehaviourStore(BehaviourStore):
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        ttl_s: float = PERSON_TTL_S,
        sweep_min: int = SWEEP_MIN,
    ) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._sweep_min = max(1, sweep_min)
        self._people: dict[str, bytes] = {}
        self._messages: dict[str, bytes] = {}  # _message_key -> record, in the order written
        self._population: dict[str, Decayed] = {}
        self._names: list[str] = []  # code -> a record's value (channel, slot, category, flag)
        self._codes: dict[str, int] = {}
        self._count_names: list[str] = []  # code -> a count's name
        self._count_codes: dict[str, int] = {}
        self._heard: tuple[float, float] | None = None  # (latest decision instant, real clock then)
        self._writes = 0  # since the last full sweep, which runs after `_sweep_after` of them
        self._sweep_after = self._sweep_min

    # -- the contract ------------------------------------------------------------------------------

    async def decided(self, sent: SentMessage, half_life_s: float) -> bool:
        if sent.now_s is not None:
            self._heard = (sent.now_s, self._clock())
        now = self.now()
        key = _message_key(sent.user_id, sent.message_id)
        known = self._messages.get(key)
        if known is not None:
            if _until(known) > now:
                return False
            del self._messages[key]  # expired: written again at the end, in expiry order
        code = self._code
        header = _RECORD.pack(now + MESSAGE_TTL_S, code(sent.channel), code(sent.slot), code(sent.category))
        self._messages[key] = header
        person = self._load(sent.user_id, now)
        self._add(person, f"{sent.channel}:sent", 1.0, sent.at_s, half_life_s)
        self._add(person, f"slot:{sent.slot}:sent", 1.0, sent.at_s, half_life_s)
        self._people[sent.user_id] = person.encoded()
        names = [f"{key}:{sent.channel}:sent" for key in prior_keys(sent.category)]
        for name in (*names, f"slot:{sent.slot}:sent"):
            _add(self._population, name, 1.0, sent.at_s, half_life_s)
        self._wrote()
        return True

    async def record(self, event: EngagementEvent, half_life_s: float) -> Recorded:
        now = self.now()
        person = self._load(event.user_id, now)
        if event.kind in ENGAGEMENTS and (math.isnan(person.active) or event.at_s > person.active):
            person.active = event.at_s
        if event.kind == "active":
            self._add(person, activity_key(event.at_s), 1.0, event.at_s, half_life_s)
        recorded = self._attributed(event, person, now, half_life_s)
        self._people[event.user_id] = person.encoded()
        self._wrote()
        return recorded

    def _attributed(
        self, event: EngagementEvent, person: _Person, now: float, half_life_s: float
    ) -> Recorded:
        """Count a channel event about a message once (attributed to its decision when known)."""
        if event.channel is None or event.kind not in CHANNEL_EVENTS or not event.message_id:
            return Recorded(False)
        key = _message_key(event.user_id, event.message_id)
        raw = self._messages.get(key)
        if raw is None or _until(raw) <= now:  # an expired record: as on Redis, unknown
            if raw is not None:
                del self._messages[key]
            none = self._code("")
            raw = _RECORD.pack(now + MESSAGE_TTL_S, none, none, none)
        _, channel_code, slot_code, category_code = _RECORD.unpack_from(raw)
        flags = array("I")
        flags.frombytes(memoryview(raw)[_RECORD.size :])
        flag = self._code(f"{event.kind}:{event.channel}")
        if flag in flags:
            return Recorded(False)
        flags.append(flag)
        names = self._names
        channel, slot, category = names[channel_code], names[slot_code], names[category_code]
        sent = self._code(_SENT)
        sent_too = not channel and sent not in flags  # else an earlier event counted its send
        if sent_too:
            flags.append(sent)
        self._messages[key] = raw[: _RECORD.size] + flags.tobytes()
        recorded = Recorded(True, channel or event.channel, slot, category, sent_too)
        channel = recorded.channel
        self._add(person, f"{channel}:{event.kind}", 1.0, event.at_s, half_life_s)
        if event.kind == "converted" and event.value:
            self._add(person, f"{channel}:value", event.value, event.at_s, half_life_s)
        if sent_too:
            self._add(person, f"{channel}:sent", 1.0, event.at_s, half_life_s)
        if slot and event.kind == "opened":
            self._add(person, f"slot:{slot}:opened", 1.0, event.at_s, half_life_s)
        for name, amount in population_updates(recorded, event.kind, event.value):
            _add(self._population, name, amount, event.at_s, half_life_s)
        return recorded

    async def get(self, user_id: str) -> Behaviour:
        raw = self._people.get(user_id)
        if raw is None or _written(raw) + self._ttl_s <= self.now():
            return Behaviour()
        counts, active = _Person.counts(raw, self._count_names.__getitem__)
        return Behaviour(None if math.isnan(active) else datetime.fromtimestamp(active, UTC), counts)

    async def population(self) -> Population:
        return Population(dict(self._population))

    # -- the clock, sizes and the sweeps -----------------------------------------------------------

    def now(self) -> float:
        """The store's clock (see the module docstring), epoch seconds."""
        real = self._clock()
        if self._heard is None:
            return real
        heard, real_then = self._heard
        return heard + (real - real_then)

    def sizes(self) -> dict[str, int]:
        """How many message records, people, names and population counts are held."""
        return {
            "messages": len(self._messages),
            "people": len(self._people),
            "names": len(self._names) + len(self._count_names),
            "population": len(self._population),
        }

    def sweep(self) -> int:
        """Remove every expired message record and person; returns how many went."""
        now = self.now()
        messages = [key for key, raw in self._messages.items() if _until(raw) <= now]
        for key in messages:
            del self._messages[key]
        horizon = now - self._ttl_s
        people = [user for user, raw in self._people.items() if _written(raw) <= horizon]
        for user in people:
            del self._people[user]
        self._writes = 0
        self._sweep_after = max(self._sweep_min, len(self._messages) + len(self._people))
        return len(messages) + len(people)

    def _sweep_front(self) -> None:
        """Remove the expired records at the front (the oldest written), up to the first live one."""
        now = self.now()
        expired = []
        for key, raw in self._messages.items():
            if _until(raw) > now:
                break
            expired.append(key)
        for key in expired:
            del self._messages[key]

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes >= self._sweep_after:
            self.sweep()
        elif self._writes % PREFIX_EVERY == 0:
            self._sweep_front()

    # -- compact storage -----------------------------------------------------------------------

    def _load(self, user_id: str, now: float) -> _Person:
        """A working copy of the person (new, or empty again when they expired), marked written
        `now`; the caller stores it back (`encoded`)."""
        raw = self._people.get(user_id)
        if raw is None or _written(raw) + self._ttl_s <= now:
            return _Person(math.nan, now)
        return _Person.decoded(raw, now)

    def _code(self, name: str) -> int:
        """The code of a record's value (a channel, slot, category or flag)."""
        code = self._codes.get(name)
        if code is None:
            code = self._codes[name] = len(self._names)
            self._names.append(name)
        return code

    def _add(self, person: _Person, name: str, amount: float, at_s: float, half_life_s: float) -> None:
        """Add to the count `name` (created when missing), decayed as `Decayed.add`."""
        code = self._count_codes.get(name)
        if code is None:
            code = self._count_codes[name] = len(self._count_names)
            self._count_names.append(name)
        person.add(code, amount, at_s, half_life_s)


class _Person:
    """One person's counts while they are written; at rest `encoded()` bytes (native order):

    doubles  last active (NaN: never), last written, (value, as of) of each general count,
             then the as-of instant of each unit count (value exactly 1.0: most counts,
             which were added once)
    uint16   the name codes of the general counts, then of the unit counts
    uint16   how many counts are general
    """

    __slots__ = ("active", "general", "general_codes", "unit", "unit_codes", "written")

    def __init__(self, active: float, written: float) -> None:
        self.active, self.written = active, written
        self.general, self.unit = array("d"), array("d")
        self.general_codes, self.unit_codes = array("H"), array("H")

    @staticmethod
    def _split(raw: bytes) -> tuple[int, int]:
        """(general, unit) counts of an encoded person."""
        general: int = _UINT16.unpack_from(raw, len(raw) - 2)[0]
        return general, (len(raw) - _HEAD - 2 - (16 + 2) * general) // (8 + 2)

    @classmethod
    def decoded(cls, raw: bytes, written: float) -> _Person:
        general, unit = cls._split(raw)
        view = memoryview(raw)
        person = cls(_DOUBLE.unpack_from(raw)[0], written)
        at = _HEAD + 16 * general
        person.general.frombytes(view[_HEAD:at])
        person.unit.frombytes(view[at : at + 8 * unit])
        at += 8 * unit
        person.general_codes.frombytes(view[at : at + 2 * general])
        person.unit_codes.frombytes(view[at + 2 * general : -2])
        return person

    @classmethod
    def counts(cls, raw: bytes, names: Callable[[int], str]) -> tuple[dict[str, Decayed], float]:
        """Without a working copy: every count by name (`names` of its code), and the last
        activity."""
        general, unit = cls._split(raw)
        view = memoryview(raw)
        at = _HEAD + 16 * general
        doubles = view[: at + 8 * unit].cast("d").tolist()
        codes = view[at + 8 * unit : -2].cast("H").tolist()
        end = 2 + 2 * general
        values = map(Decayed, doubles[2:end:2], doubles[3:end:2])
        counts = dict(zip(map(names, codes[:general]), values, strict=True))
        counts.update(zip(map(names, codes[general:]), map(Decayed, repeat(1.0), doubles[end:]), strict=True))
        return counts, doubles[_ACTIVE]

    def encoded(self) -> bytes:
        return b"".join(
            (
                _TWO_DOUBLES.pack(self.active, self.written),
                self.general,
                self.unit,
                self.general_codes,
                self.unit_codes,
                _UINT16.pack(len(self.general_codes)),
            )
        )

    def add(self, code: int, amount: float, at_s: float, half_life_s: float) -> None:
        """`Decayed.add` on the count `code`; a count whose value is exactly 1.0 keeps only its
        instant."""
        if code in self.general_codes:
            index = 2 * self.general_codes.index(code)
            count = Decayed(self.general[index], self.general[index + 1]).add(amount, at_s, half_life_s)
            self.general[index], self.general[index + 1] = count.value, count.as_of_s
            return
        if code in self.unit_codes:
            index = self.unit_codes.index(code)
            count = Decayed(1.0, self.unit[index]).add(amount, at_s, half_life_s)
            del self.unit[index], self.unit_codes[index]
        else:
            count = Decayed().add(amount, at_s, half_life_s)
        if count.value == 1.0:
            self.unit.append(count.as_of_s)
            self.unit_codes.append(code)
        else:
            self.general.extend((count.value, count.as_of_s))
            self.general_codes.append(code)


def _message_key(user_id: str, message_id: str) -> str:
    """One string per (user, message): the length keeps any two pairs apart."""
    return f"{len(user_id)}:{user_id}{message_id}"


def _until(record: bytes) -> float:
    until: float = _DOUBLE.unpack_from(record)[0]
    return until


def _written(person: bytes) -> float:
    """When the person was last written (their second double), without decoding the rest."""
    written: float = _DOUBLE.unpack_from(person, 8 * _WRITTEN)[0]
    return written


def _add(counts: dict[str, Decayed], name: str, amount: float, at_s: float, half_life_s: float) -> None:
    counts[name] = counts.get(name, Decayed()).add(amount, at_s, half_life_s)
