"""Hot reload: watch the rules directory and reload on change.

File-system events (plain edits, new or removed files, and a Kubernetes ConfigMap's `..data`
symlink swap, which shows up as events inside the directory) trigger a reload after a short
debounce. As a backstop, the directory's content is also checked every `poll_s` seconds, which
catches changes no event reports (e.g. the rules path itself being a symlink that is swapped).
Unchanged content is never rebuilt, and content that failed is not tried again until it
changes (see `ActiveRules.load_async`). Loads run beside serving: the event loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from watchfiles import awatch

from smart_dispatch.errors import RuleFileError
from smart_dispatch.rules.active import ActiveRules

log = logging.getLogger(__name__)


class RulesWatcher:
    def __init__(self, rules: ActiveRules, *, debounce_ms: int = 200, poll_s: float = 5.0) -> None:
        self._rules = rules
        self._debounce_ms = debounce_ms
        self._poll_ms = max(50, int(poll_s * 1000))
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[bool]] = set()

    async def reload(self) -> bool:
        """Reload if the content changed; a broken directory is recorded, never raised."""
        try:
            return await self._rules.load_async()
        except RuleFileError:
            return False  # recorded in ActiveRules.status() and logged there

    def reload_soon(self) -> None:
        """Start a reload in the background (for a signal handler)."""
        task = asyncio.create_task(self.reload(), name="rules-reload")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rules-watcher")

    async def stop(self) -> None:
        self._stop.set()
        for task in list(self._pending):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        directory = self._rules.directory
        while not self._stop.is_set():
            try:
                async for _changes in awatch(
                    directory,
                    watch_filter=None,
                    debounce=self._debounce_ms,
                    rust_timeout=self._poll_ms,
                    yield_on_timeout=True,
                    stop_event=self._stop,
                    recursive=True,
                ):
                    await self.reload()
            except (FileNotFoundError, OSError, RuntimeError) as exc:
                # the directory vanished (e.g. mid-swap): keep serving, look again shortly
                log.warning("cannot watch %s (%s); retrying", directory, exc)
                await self.reload()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self._poll_ms / 1000)
