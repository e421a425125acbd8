"""Folding fired rules' effects into a plan draft. Pure.

Rules are applied in firing order (priority, then file order); each effect merges as the effect
table says (`rules/effects.py`): `prefer` and `caps` concatenate, `deny` unites, `only`
intersects, and for every other effect the first rule that sets it wins, so a higher-priority
rule cannot be overridden by a lower one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from smart_dispatch.domain import AppliedEffect
from smart_dispatch.rules.effects import EFFECTS
from smart_dispatch.rules.model import Choose, Digest, Effects, OnCap, QuietHours, Rule, SendTime


@dataclass(slots=True)
class PlanDraft:
    prefer: list[str] = field(default_factory=list)
    deny: set[str] = field(default_factory=set)
    only: set[str] | None = None
    fallback: tuple[str, ...] | None = None
    caps: list[str] = field(default_factory=list)
    on_cap: OnCap = "defer"
    quiet_hours: QuietHours | None = None
    bypass_caps: bool = False
    bypass_quiet_hours: bool = False
    suppress: str | None = None
    escalate_after: float | None = None
    choose: Choose | None = None
    send_time: SendTime | None = None
    min_expected_engagement: float | None = None
    lane: str | None = None
    digest: Digest | None = None
    #: the person's preferences that time the message (set after folding, not by rules): a mute
    #: that holds it until then, and their own quiet hours (policy defer)
    mute_until: datetime | None = None
    personal_quiet_hours: QuietHours | None = None
    #: effect name -> the rule that set it (for reasons)
    source: dict[str, str] = field(default_factory=dict)
    #: every effect that changed the draft, in the order applied
    applied: list[AppliedEffect] = field(default_factory=list)


def fold(rules: Sequence[Rule], *, explain: bool = False) -> PlanDraft:
    """The draft of `rules` (firing order); with `explain`, `applied` lists every effect."""
    draft = PlanDraft()
    for rule in rules:
        present = rule.effects.present
        if present is None:
            present = _present(rule.effects)
        for name, merge, value in present:
            changed = _merge(draft, name, merge, value, rule.name)
            if explain and changed is not None:
                draft.applied.append(AppliedEffect(rule.name, name, _text(changed), rule.shadow))
    return draft


def _present(effects: Effects) -> tuple[tuple[str, str, Any], ...]:
    """The effects that can change a draft (not None; for `concat` and `union`, not empty: an
    empty `only` or `fallback` does change it), kept on `effects` (immutable otherwise: this is
    a cache of its own fields)."""
    present = tuple(
        (effect.name, effect.merge, value)
        for effect in EFFECTS
        if (value := getattr(effects, effect.name)) is not None
        and not (effect.merge in ("concat", "union") and not value)
    )
    object.__setattr__(effects, "present", present)
    return present


def _merge(draft: PlanDraft, name: str, merge: str, value: Any, rule: str) -> Any:
    """Merge one rule's `value` of effect `name` into `draft`; what changed it, or None."""
    if merge == "concat":
        new = _new(value, getattr(draft, name))
        getattr(draft, name).extend(new)
        for item in new:  # which rule brought each item in (reasons name it)
            draft.source.setdefault(f"{name}:{item}", rule)
        return new or None
    if merge == "union":
        if not value:
            return None
        getattr(draft, name).update(value)
        return value
    if merge == "intersect":
        if value is None:
            return None
        current = getattr(draft, name)
        setattr(draft, name, set(value) if current is None else current & set(value))
        return value
    if value is None or name in draft.source:
        return None
    setattr(draft, name, value)
    draft.source[name] = rule
    return value


def _new(items: Sequence[str], present: Sequence[str]) -> list[str]:
    """`items` not in `present`, first occurrence only, in order."""
    out: list[str] = []
    for item in items:
        if item not in present and item not in out:
            out.append(item)
    return out


def _text(value: Any) -> str:
    if isinstance(value, QuietHours):
        return f"{value.start:%H:%M}-{value.end:%H:%M} policy={value.policy}"
    if isinstance(value, SendTime):
        within = f"within {value.within_s:g}s, min_events={value.min_events}"
        return f"by engagement, {within} explore={value.explore}"
    if isinstance(value, Choose):
        return f"by engagement, objective={value.objective} margin={value.margin:g} explore={value.explore}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
