"""What a loaded rules directory is: frozen, validated, engine-independent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from typing import Any, Literal

from smart_dispatch.counters.base import CapSpec

OnCap = Literal["defer", "next_channel", "drop"]
QuietPolicy = Literal["defer", "drop"]


@dataclass(frozen=True, slots=True)
class QuietHours:
    """No sends from `start` to `end` (local clock of the recipient; wraps midnight when
    `start > end`). `policy` says what happens to a message that falls inside."""

    start: time
    end: time
    policy: QuietPolicy = "defer"


@dataclass(frozen=True, slots=True)
class Effects:
    """The declarative `then` of a rule. Unset scalars (None) leave the plan draft alone."""

    prefer: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    fallback: tuple[str, ...] | None = None
    caps: tuple[str, ...] = ()
    on_cap: OnCap | None = None
    quiet_hours: QuietHours | None = None
    bypass_caps: bool | None = None
    bypass_quiet_hours: bool | None = None
    suppress: str | None = None
    #: seconds to wait for engagement (opened/clicked) after a step before the next one goes
    escalate_after: float | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """`when` is a durable-rules condition over the facts document (as written in the file)."""

    name: str
    priority: int
    when: Mapping[str, Any]
    effects: Effects
    file: str
    line: int
    shadow: bool = False

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Every rule of a directory in firing order (priority, then file and position), the caps
    they may apply, the message categories they cover, and the content hash as version."""

    version: str
    rules: tuple[Rule, ...]
    caps: Mapping[str, CapSpec]
    categories: frozenset[str]
    files: tuple[str, ...]
    referenced_paths: frozenset[str] = field(default_factory=frozenset)
