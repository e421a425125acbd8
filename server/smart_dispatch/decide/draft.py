"""Folding fired rules' effects into a plan draft. Pure.

Rules are applied in firing order (priority, then file order). List effects accumulate
(`prefer` concatenates, `deny` unites, `only` intersects, `caps` unites in order); for scalar
effects (`on_cap`, `quiet_hours`, `bypass_*`, `suppress`, `fallback`) the first rule that sets one
wins, so a higher-priority rule cannot be overridden by a lower one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from smart_dispatch.domain import AppliedEffect
from smart_dispatch.rules.model import OnCap, QuietHours, Rule

_SCALARS = (
    "on_cap",
    "quiet_hours",
    "bypass_caps",
    "bypass_quiet_hours",
    "suppress",
    "fallback",
    "escalate_after",
)


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
    #: effect name -> the rule that set it (for reasons)
    source: dict[str, str] = field(default_factory=dict)
    #: every effect that changed the draft, in the order applied
    applied: list[AppliedEffect] = field(default_factory=list)


def fold(rules: Sequence[Rule], *, explain: bool = False) -> PlanDraft:
    """The draft of `rules` (firing order); with `explain`, `applied` lists every effect."""
    draft = PlanDraft()
    for rule in rules:
        e = rule.effects

        def applied(effect: str, value: Any, rule: Rule = rule) -> None:
            if explain:
                draft.applied.append(AppliedEffect(rule.name, effect, _text(value), rule.shadow))

        new_prefs = _new(e.prefer, draft.prefer)
        for channel in new_prefs:
            draft.prefer.append(channel)
            draft.source.setdefault(f"prefer:{channel}", rule.name)
        if new_prefs:
            applied("prefer", new_prefs)
        if e.deny:
            draft.deny.update(e.deny)
            applied("deny", e.deny)
        if e.only is not None:
            draft.only = set(e.only) if draft.only is None else draft.only & set(e.only)
            applied("only", e.only)
        new_caps = _new(e.caps, draft.caps)
        if new_caps:
            draft.caps.extend(new_caps)
            applied("caps", new_caps)
        for name in _SCALARS:
            value = getattr(e, name)
            if value is not None and name not in draft.source:
                setattr(draft, name, value)
                draft.source[name] = rule.name
                applied(name, value)
    return draft


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
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
