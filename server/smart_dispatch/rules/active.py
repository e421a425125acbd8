"""The ruleset version serving decisions, and how a new one replaces it.

A new version is read, validated and compiled on its own engine ruleset beside the old one,
then swapped in with one reference assignment. Decisions hold a lease on the version they
started with, so they finish on it; a replaced version's engine ruleset is freed when its last
lease ends. A failed load leaves the serving version untouched and is recorded in `status()`.
Reloads whose content hash equals the serving version are skipped (each engine rebuild leaks a
little memory inside durable-rules), and so are reloads of content that already failed: a broken
file is tried again when it changes, not on every poll.

Every candidate is first tried in a child process with a time and memory budget (guard.py);
only one that passed is built here. `load_async` does that without blocking the event loop:
the child is awaited, and the parse and the engine build run in a worker thread. The engine's
C calls never release the GIL, so each is atomic with respect to the event loop's own
evaluations; what the thread adds is that the loop runs between them (Health keeps answering).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from smart_dispatch.config import Settings
from smart_dispatch.errors import NotReadyError, RuleFileError
from smart_dispatch.rules.engine import CompiledRules, EngineError, condition_error
from smart_dispatch.rules.guard import CompileBudget, check_sources, check_sources_async
from smart_dispatch.rules.loader import content_version, parse_ruleset, read_sources, rule_files
from smart_dispatch.rules.model import Rule, Ruleset

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, eq=False)
class RulesVersion:
    ruleset: Ruleset
    compiled: CompiledRules
    loaded_at: datetime
    by_name: dict[str, Rule]

    @property
    def version(self) -> str:
        return self.ruleset.version


@dataclass(frozen=True, slots=True)
class LoadFailure:
    file: str
    line: int
    message: str
    at: datetime


@dataclass(frozen=True, slots=True)
class RulesStatus:
    directory: Path
    version: str
    loaded_at: datetime | None
    files: tuple[str, ...]
    rule_count: int
    reloads: int
    last_error: LoadFailure | None
    failures_since_load: int


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
    """Holds the serving `RulesVersion`. Use from one thread (the event loop)."""

    def __init__(self, directory: Path, budget: CompileBudget | None = None) -> None:
        self.directory = directory
        self.budget = budget or CompileBudget()
        self._failed: tuple[str, RuleFileError] | None = None  # content version, its error
        self._loading: asyncio.Lock | None = None
        self._current: RulesVersion | None = None
        self._leases: dict[int, int] = {}
        self._retired: dict[int, RulesVersion] = {}
        self._reloads = 0
        self._failures = 0
        self._last_error: LoadFailure | None = None
        self._on_load: list[Callable[[str], None]] = []

    @classmethod
    def for_settings(cls, settings: Settings) -> ActiveRules:
        return cls(
            settings.rules_dir,
            CompileBudget(settings.rules_compile_timeout_s, settings.rules_compile_memory_mb),
        )

    def on_load(self, hook: Callable[[str], None]) -> None:
        """Also call `hook(result)` after every load: "loaded", "unchanged" or "failed"."""
        self._on_load.append(hook)

    def _loaded(self, result: str) -> None:
        for hook in self._on_load:
            hook(result)

    def current(self) -> RulesVersion:
        if self._current is None:
            raise NotReadyError("no ruleset is loaded")
        return self._current

    @contextlib.contextmanager
    def lease(self) -> Iterator[RulesVersion]:
        """The serving version, kept alive (not freed by a swap) until the block ends."""
        version = self.current()
        key = id(version)
        self._leases[key] = self._leases.get(key, 0) + 1
        try:
            yield version
        finally:
            self._leases[key] -= 1
            if not self._leases[key]:
                del self._leases[key]
                retired = self._retired.pop(key, None)
                if retired is not None:
                    retired.compiled.close()

    def load(self) -> bool:
        """Load the directory and swap it in when its content changed; returns whether it did.
        On any error the serving version stays, the failure is recorded, and it is raised.
        Blocks while the candidate is tried and built: for the command line and tests."""
        candidate = self._candidate()
        if candidate is None:
            return False
        content, sources = candidate
        try:
            check_sources(sources, self.budget, str(self.directory))
            version = compile_ruleset(parse_ruleset(sources))
        except RuleFileError as exc:
            self._failed_load(exc, content)
            raise
        self._swap(version)
        return True

    async def load_async(self) -> bool:
        """`load` for a server: the event loop keeps running throughout; loads never overlap."""
        if self._loading is None:
            self._loading = asyncio.Lock()
        async with self._loading:
            candidate = self._candidate()
            if candidate is None:
                return False
            content, sources = candidate
            try:
                await check_sources_async(sources, self.budget, str(self.directory))
                version = await asyncio.to_thread(lambda: compile_ruleset(parse_ruleset(sources)))
            except RuleFileError as exc:
                self._failed_load(exc, content)
                raise
            self._swap(version)
            return True

    def _candidate(self) -> tuple[str, dict[str, str]] | None:
        """The directory's content version and rule files, or None when they are the serving
        version. Content that failed before raises the same error at once, uncounted."""
        try:
            sources = read_sources(self.directory)
        except RuleFileError as exc:  # unreadable or oversized: known by the files' stat
            key = _stat_key(self.directory)
            if self._failed is not None and self._failed[0] == key:
                raise self._failed[1] from None
            self._failed_load(exc, key)
            raise
        content = content_version(sources)
        if self._current is not None and content == self._current.version:
            self._last_error = None
            self._failed = None
            self._loaded("unchanged")
            return None
        if self._failed is not None and self._failed[0] == content:
            raise self._failed[1]
        return content, sources

    def _failed_load(self, exc: RuleFileError, content: str | None) -> None:
        self._failed = None if content is None else (content, exc)
        self._failures += 1
        self._last_error = LoadFailure(exc.file, exc.line, str(exc), datetime.now(UTC))
        log.error(
            "rules reload failed (%d since last load), keeping %s: %s",
            self._failures,
            self._current.version if self._current else "nothing",
            exc,
        )
        self._loaded("failed")

    def _swap(self, version: RulesVersion) -> None:
        old, self._current = self._current, version
        self._failed = None
        self._reloads += 1
        self._failures = 0
        self._last_error = None
        log.info(
            "rules %s loaded from %s (%d rules)", version.version, self.directory, len(version.ruleset.rules)
        )
        if old is not None:
            self._retire(old)
        self._loaded("loaded")

    def _retire(self, version: RulesVersion) -> None:
        if self._leases.get(id(version)):
            self._retired[id(version)] = version
        else:
            version.compiled.close()

    def status(self) -> RulesStatus:
        current = self._current
        return RulesStatus(
            directory=self.directory,
            version=current.version if current else "",
            loaded_at=current.loaded_at if current else None,
            files=current.ruleset.files if current else (),
            rule_count=len(current.ruleset.rules) if current else 0,
            reloads=self._reloads,
            last_error=self._last_error,
            failures_since_load=self._failures,
        )

    def close(self) -> None:
        """Free the serving version's engine ruleset (at shutdown)."""
        if self._current is not None:
            self._retire(self._current)
            self._current = None


def _stat_key(directory: Path) -> str:
    """Names, sizes and modification times of the rule files (for files not read)."""
    try:
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in rule_files(directory)]
    except OSError as exc:
        return f"stat:{exc}"
    return f"stat:{stats}"
