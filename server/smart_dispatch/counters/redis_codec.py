"""What `RedisCounterStore` sends to reserve.lua / refund.lua and how it reads the replies.

The formats are documented in the scripts' headers (keys, ARGV, reply); this module only
encodes and decodes them, talks to no server and imports no other Redis module:

- `KeySchema`: the key names (a user's caps in the `{u:<user>}` slot group, global caps in `{g}`;
  a global cap above the sliding-counter threshold is a counter hash with per-message markers);
- `Plan`: what only depends on an options tuple, computed once (key templates, the binary cap
  spec of ARGV 4); `tail_args` and `control` the rest of ARGV;
- `ScriptReply` / `decode`: a reply of any mode; `full_outcome`: a mode "F" reply as the
  `ReserveOutcome` it stands for (the hot path: no intermediate `ScriptReply`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from smart_dispatch.counters.base import (
    CapSpec,
    CapUsage,
    OptionOutcome,
    ReserveOutcome,
    ReserveRequest,
    to_ms,
)

SLIDING_COUNTER_MIN_LIMIT = 1000
"""A global cap whose limit exceeds this uses the approximate sliding-window counter."""

Mode = Literal["F", "C", "D", "E", "M", "U"]  # reserve.lua modes (see its header)
EVALUATED, REPEAT, CANDIDATES = 0, 1, 2  # reserve.lua reply kinds
DEFER_NONE, DEFER_RECORDED, DEFER_REFUSED = 0, 1, 2  # reserve.lua defer states

Caps = tuple[CapSpec, ...]
Options = tuple[Caps, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """What a reserve.lua call over one options tuple sends, computed once: `keys` are templates
    (`user_head + user + tail`, a constant global key, or `head + member` for a counter marker),
    `spec` the encoded caps (ARGV 4, binary: see reserve.lua)."""

    keys: tuple[tuple[int, str, str], ...]  # (0 constant | 1 per user | 2 per member, head, tail)
    spec: bytes

    def key_names(self, user_id: str, member: str) -> list[str]:
        return [
            head if kind == 0 else (head + user_id + tail if kind == 1 else head + member)
            for kind, head, tail in self.keys
        ]


@dataclass(frozen=True, slots=True)
class KeySchema:
    """The key names of reserve.lua's header under `prefix` (checked by the store: no braces).
    A global cap whose limit exceeds `sliding_min` is a sliding-window counter."""

    prefix: str
    sliding_min: int = SLIDING_COUNTER_MIN_LIMIT

    def is_sliding(self, cap: CapSpec) -> bool:
        return cap.scope == "global" and cap.limit > self.sliding_min

    def cap_key(self, cap: CapSpec, user_id: str) -> str:
        kind, head, tail = self.template(cap)
        return head + user_id + tail if kind == 1 else head

    def marker_key(self, cap: CapSpec, member: str) -> str:
        return f"{self.prefix}:{{g}}:ctr:{cap.name}:m:{member}"

    def template(self, cap: CapSpec) -> tuple[int, str, str]:
        """The cap's key as a `Plan` key template."""
        if cap.scope == "user":
            return (1, f"{self.prefix}:{{u:", f"}}:cap:{cap.name}")
        kind = "ctr" if self.is_sliding(cap) else "cap"
        return (0, f"{self.prefix}:{{g}}:{kind}:{cap.name}", "")

    def plan(self, options: Options) -> Plan:
        """The request parts of `options` (see reserve.lua's ARGV 4). Raises ValueError past 255
        options or caps per option, or 65535 keys."""
        keys: dict[tuple[int, str, str], int] = {}
        fields: list[float] = []
        for caps in options:
            for cap in caps:
                key = keys.setdefault(self.template(cap), len(keys) + 1)
                marker = 0
                if self.is_sliding(cap):
                    template = (2, f"{self.prefix}:{{g}}:ctr:{cap.name}:m:", "")
                    marker = keys.setdefault(template, len(keys) + 1)
                kind = b"c" if marker else b"z"
                fields += [kind[0], key, float(cap.limit), float(to_ms(cap.window_s)), marker]
        sizes = [len(caps) for caps in options]
        layout = f">B{len(sizes)}B{'BHddH' * sum(sizes)}"
        try:
            spec = struct.pack(layout, len(sizes), *sizes, *fields)
        except struct.error as exc:
            raise ValueError(f"too many options, caps or keys for one reserve: {exc}") from exc
        return Plan(tuple(keys), spec)


def control(mode: Mode, dry_run: bool, eval_ok: bool, eligible: Sequence[bool] | None) -> str:
    """reserve.lua's ARGV 3: mode, dry run, eval_ok, then one flag per option (none: all may be
    chosen)."""
    ctl = mode + ("1" if dry_run else "0") + ("1" if eval_ok else "0")
    if eligible is not None:
        ctl += "".join("1" if e else "0" for e in eligible)
    return ctl


def tail_args(request: ReserveRequest, defer: str, restore: Sequence[int | None] = ()) -> list[str | bytes]:
    """reserve.lua's ARGV 5 on: defer, not_after, the request clock, mode "U"'s former scores
    (nothing when none is needed)."""
    now = "" if request.now_s is None else str(to_ms(request.now_s))
    if not (defer or restore or now):
        return []
    return [
        defer,
        not_after_arg(request) if defer else "",
        now,
        *("" if s is None else str(s) for s in restore),
    ]


def not_after_arg(request: ReserveRequest) -> str:
    """`not_after_s` as the latest whole ms `t` with `t / 1000 <= not_after_s` (the comparison
    MemoryCounterStore makes), "" for none."""
    limit = request.not_after_s
    if limit is None or limit == math.inf:
        return ""
    if not math.isfinite(limit):  # NaN or -inf: no instant qualifies
        return "-1"
    ms = math.floor(limit * 1000)
    while (ms + 1) / 1000 <= limit:
        ms += 1
    while ms / 1000 > limit:
        ms -= 1
    return str(ms)


@dataclass(frozen=True, slots=True)
class ScriptReply:
    """A decoded reserve.lua reply. `entries`: the evaluated options (EVALUATED), the chosen one
    (REPEAT), or per option the held ones as allowed outcomes and None (CANDIDATES, `scores` then
    holds each held option's first score). `previous` holds the recorded caps' former scores (ms)
    for a later mode "U"; `deferred_usages` option 0's usages at `defer_at_ms` when deferred."""

    now_s: float
    at_ms: int
    kind: int
    chosen: int | None
    reserved_at_s: float | None
    entries: list[OptionOutcome | None]
    scores: list[int | None]
    previous: list[int | None]
    defer_state: int
    defer_at_ms: int | None
    deferred_usages: tuple[CapUsage, ...]


def instant(raw_ms: int | None) -> float | None:
    """A reply instant (ms, None = absent) in seconds, computed as MemoryCounterStore does."""
    return None if raw_ms is None else raw_ms / 1000


def _usages(raw: list[Any], i: int, caps: Caps) -> tuple[CapUsage, ...]:
    """The `used, reset_at` pairs of `caps` from `raw[i]` on."""
    usages = []
    for cap in caps:
        reset = raw[i + 1]
        usages.append(CapUsage(cap, raw[i], None if reset is None else reset / 1000))
        i += 2
    return tuple(usages)


def _entries(raw: list[Any], i: int, options: Sequence[Caps]) -> tuple[list[OptionOutcome], int]:
    """Evaluated options `{ allowed, retry_at, usages }` from `raw[i]` on, and the next index."""
    entries = []
    for caps in options:
        retry = raw[i + 1]
        entries.append(
            OptionOutcome(raw[i] == 1, _usages(raw, i + 2, caps), None if retry is None else retry / 1000)
        )
        i += 2 + 2 * len(caps)
    return entries, i


def decode(raw: list[Any], options: Options, mode: Mode) -> ScriptReply:
    """A reserve.lua reply (reserve.lua's "Reply") over `options`, sent in `mode`."""
    now, at, kind, chosen, reserved, defer_state, defer_at = raw[:7]
    i = 7
    entries: list[OptionOutcome | None] = []
    scores: list[int | None] = []
    if kind == REPEAT:
        found, i = _entries(raw, i, options[chosen : chosen + 1])
        entries += found
    elif kind == CANDIDATES:
        for caps in options:
            if raw[i] == 1:
                scores.append(raw[i + 1])
                entries.append(OptionOutcome(True, _usages(raw, i + 2, caps), None))
                i += 2 + 2 * len(caps)
            else:
                entries.append(None)
                scores.append(None)
                i += 2
    elif mode not in ("D", "M"):
        found, i = _entries(raw, i, options if chosen < 0 else options[: chosen + 1])
        entries += found
    previous = raw[i + 1 : i + 1 + raw[i]]
    deferred: tuple[CapUsage, ...] = ()
    if defer_state == DEFER_RECORDED:
        deferred = _usages(raw, i + 1 + raw[i], options[0])
    return ScriptReply(
        now / 1000,
        at,
        kind,
        None if chosen < 0 else chosen,
        None if reserved is None else reserved / 1000,
        entries,
        scores,
        previous,
        defer_state,
        defer_at,
        deferred,
    )


def full_outcome(raw: list[Any], options: Options) -> ReserveOutcome:
    """The `ReserveOutcome` of a mode "F" reply over `options`."""
    now, _, kind, chosen, reserved, defer_state, defer_at = raw[:7]
    if kind == REPEAT:
        found, _ = _entries(raw, 7, options[chosen : chosen + 1])
        return ReserveOutcome(now / 1000, chosen, (found[0],), True, reserved / 1000)
    found, i = _entries(raw, 7, options if chosen < 0 else options[: chosen + 1])
    if defer_state == DEFER_RECORDED:
        at_s = defer_at / 1000
        first = OptionOutcome(False, _usages(raw, i + 1 + raw[i], options[0]), at_s)
        return ReserveOutcome(now / 1000, 0, (first, *found[1:]), False, at_s, deferred=True)
    return ReserveOutcome(
        now / 1000,
        None if chosen < 0 else chosen,
        tuple(found),
        False,
        None if reserved is None else reserved / 1000,
    )
