"""What one pass of the pipeline collects besides the plan: reasons and cap states."""

from __future__ import annotations

from dataclasses import dataclass, field

from smart_dispatch.domain import CapState, Reason


@dataclass(slots=True)
class Trace:
    reasons: list[Reason] = field(default_factory=list)
    caps: tuple[CapState, ...] = ()

    def add(self, code: str, rule: str = "", detail: str = "") -> None:
        self.reasons.append(Reason(code, rule, detail))
