"""Folding fired rules' effects into a plan draft. Pure.

Rules are applied in firing order (priority, then file order). List effects accumulate
(`prefer` concatenates, `deny` unites, `only` intersects, `caps` unites in order); for scalar
effects (`on_cap`, `quiet_hours`, `bypass_*`, `suppress`, `fallback`) the first rule that sets one
wins, so a higher-priority rule cannot be overridden by a lower one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from smart_dispatch.rules.model import OnCap, QuietHours, Rule


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
    #: effect name -> the rule that set it (for reasons)
    source: dict[str, str] = field(default_factory=dict)


def fold(rules: Sequence[Rule]) -> PlanDraft:
    draft = PlanDraft()
    for rule in rules:
        e = rule.effects
        for channel in e.prefer:
            if channel not in draft.prefer:
                draft.prefer.append(channel)
                draft.source.setdefault(f"prefer:{channel}", rule.name)
        draft.deny.update(e.deny)
        if e.only is not None:
            draft.only = set(e.only) if draft.only is None else draft.only & set(e.only)
        for cap in e.caps:
            if cap not in draft.caps:
                draft.caps.append(cap)
        for name in ("on_cap", "quiet_hours", "bypass_caps", "bypass_quiet_hours", "suppress", "fallback"):
            value = getattr(e, name)
            if value is not None and name not in draft.source:
                setattr(draft, name, value)
                draft.source[name] = rule.name
    return draft
