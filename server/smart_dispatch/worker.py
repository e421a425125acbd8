"""`smart-dispatch worker`: a sender pool in its own process, sharing a durable store.

Runs no gRPC server; claims dispatches from the store (Redis) like the in-process senders of
`serve` do. SIGTERM / SIGINT: stop claiming, finish in-flight sends, exit. SIGHUP reloads rules.
"""

from __future__ import annotations

import logging

from smart_dispatch.config import Settings
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.rules.active import ActiveRules
from smart_dispatch.rules.watch import RulesWatcher
from smart_dispatch.runtime import Runtime, stop_on_signals, unless_stopped

log = logging.getLogger(__name__)


async def run_worker(settings: Settings) -> None:
    if settings.senders < 1:
        raise ConfigurationError("a worker needs --senders >= 1")
    rules = ActiveRules.for_settings(settings)
    watcher = RulesWatcher(rules, poll_s=settings.rules_poll_s)
    stop = stop_on_signals(watcher.reload_soon)
    started, runtime = await unless_stopped(Runtime.build(settings, rules), stop)
    if not started or runtime is None:
        rules.close()
        return
    if not runtime.stores.dispatches.durable:
        await runtime.close()
        raise ConfigurationError("a separate worker needs a shared store: use --store redis://…")
    assert runtime.pool is not None
    await runtime.telemetry.start()  # /metrics on the admin HTTP port, when configured
    runtime.pool.start()
    if settings.watch_rules:
        watcher.start()
    runtime.serving()
    print(f"smart-dispatch worker running {settings.senders} senders on {settings.store_url}", flush=True)
    await stop.wait()
    log.info("signal received: finishing in-flight sends")
    await watcher.stop()
    await runtime.close()
    rules.close()
