"""The ruleset version serving decisions, and how a new one replaces it.

A new version is loaded, validated and compiled beside the old one, then swapped in with one
reference assignment; a decision holds the version it started with, so it finishes on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from smart_dispatch.errors import NotReadyError, RuleFileError
from smart_dispatch.rules.engine import CompiledRules, EngineError, condition_error
from smart_dispatch.rules.loader import load_ruleset
from smart_dispatch.rules.model import Rule, Ruleset


@dataclass(frozen=True, slots=True)
class RulesVersion:
    ruleset: Ruleset
    compiled: CompiledRules
    loaded_at: datetime
    by_name: dict[str, Rule]

    @property
    def version(self) -> str:
        return self.ruleset.version


def compile_ruleset(ruleset: Ruleset) -> RulesVersion:
    """Compile `ruleset` into the engine; a rejected condition is reported at its rule's line."""
    try:
        compiled = CompiledRules(ruleset)
    except EngineError as exc:
        for rule in ruleset.rules:
            if (problem := condition_error(rule.name, rule.when)) is not None:
                raise RuleFileError(rule.file, rule.line, f"rule {rule.name!r}: {problem}") from exc
        raise RuleFileError(ruleset.files[0], 0, str(exc)) from exc
    return RulesVersion(ruleset, compiled, datetime.now(UTC), {r.name: r for r in ruleset.rules})


class ActiveRules:
    """Holds the serving `RulesVersion`. `current()` raises `NotReadyError` before the first load."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._current: RulesVersion | None = None

    def current(self) -> RulesVersion:
        if self._current is None:
            raise NotReadyError("no ruleset is loaded")
        return self._current

    def load(self) -> RulesVersion:
        """Load the directory and swap it in; on any error the old version keeps serving."""
        version = compile_ruleset(load_ruleset(self.directory))
        self._current = version
        return version

    def close(self) -> None:
        """Free the serving version's engine ruleset (at shutdown)."""
        if self._current is not None:
            self._current.compiled.close()
            self._current = None
