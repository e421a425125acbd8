"""Everything a sidecar or a worker process runs on, built once from the settings.

    rules -> stores -> providers, templates -> decider -> preferences, events, dispatcher
          -> sender pool

`serve` (app.py) puts the gRPC server in front; `worker` (worker.py) runs only the sender pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from smart_dispatch import heap
from smart_dispatch.channels.base import Provider
from smart_dispatch.config import Settings
from smart_dispatch.decide.pipeline import Decider, FailurePolicy
from smart_dispatch.decisionlog.writer import DecisionRecorder
from smart_dispatch.dispatch.pool import SenderPool
from smart_dispatch.dispatch.resilience import RetryBudget, RetryPolicy
from smart_dispatch.dispatch.service import Dispatcher
from smart_dispatch.domain import set_custom_channels
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.events import EventRecorder
from smart_dispatch.preferences.centre import PreferenceCentre
from smart_dispatch.preferences.unsubscribe_token import UnsubscribeLinks, UnsubscribeTokens
from smart_dispatch.rules.active import ActiveRules
from smart_dispatch.stores import StoreOptions, Stores, stores_from_url
from smart_dispatch.telemetry import Telemetry

log = logging.getLogger(__name__)
T = TypeVar("T")


def stop_on_signals(on_reload: Callable[[], None]) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; SIGHUP calls `on_reload`. Install before starting,
    so a signal that arrives during start-up is not lost."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    return stop


async def unless_stopped(starting: Awaitable[T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """Await `starting` unless `stop` is set first, in which case it is cancelled.
    Returns (started, its result)."""
    start = asyncio.ensure_future(starting)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if start.done():
        return True, start.result()
    start.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await start
    return False, None


@dataclass
class Runtime:
    settings: Settings
    rules: ActiveRules
    stores: Stores
    providers: dict[str, Provider]
    decider: Decider
    events: EventRecorder
    dispatcher: Dispatcher
    pool: SenderPool | None
    telemetry: Telemetry = field(default_factory=Telemetry.noop)
    owns_telemetry: bool = False
    #: fills the decision log and the analytics counts (None with SD_DECISION_LOG=false)
    recorder: DecisionRecorder | None = None
    #: the preference centre (always built; None only for a runtime made by hand)
    preferences: PreferenceCentre | None = None

    @classmethod
    async def build(
        cls, settings: Settings, rules: ActiveRules, telemetry: Telemetry | None = None
    ) -> Runtime:
        """Load rules (failing fast on invalid files) and connect everything; the sender pool
        is created (not started) when `settings.senders > 0`. Without `telemetry`, one is built
        from the settings and closed with the runtime. The admin HTTP port is not served yet:
        the process calls `telemetry.start()` once it added its routes."""
        owned = telemetry is None
        telemetry = Telemetry.from_settings(settings) if telemetry is None else telemetry
        try:
            runtime = await cls._build(settings, rules, telemetry)
        except BaseException:
            if owned:
                await telemetry.close()
            raise
        runtime.owns_telemetry = owned
        return runtime

    @classmethod
    async def _build(cls, settings: Settings, rules: ActiveRules, telemetry: Telemetry) -> Runtime:
        s = settings
        rules.on_load(telemetry.rules_loaded)
        if s.gc_tuning:
            heap.tune_collector()
            rules.on_load(_freeze_after_reload)
        providers_config = _providers_config(settings)  # its custom channels, before the rules
        await rules.load_async()
        tokens, links = _unsubscribe_links(settings, rules)
        options = StoreOptions(
            s.store_timeout_s,
            s.key_prefix,
            s.claim_timeout_s,
            s.allow_list,
            s.deny_list,
            s.decision_log_retention_s,
            s.decision_log_max_entries,
        )
        stores = stores_from_url(s.store_url, options)
        try:
            for user in options.allow:
                await stores.lists.add("allow", user)
            for user in options.deny:
                await stores.lists.add("deny", user)
            retry = RetryPolicy(s.retry_attempts, s.retry_base_s, s.retry_max_s, timeout_s=s.send_timeout_s)
            providers, retry_by_channel = _providers(settings, stores, retry, providers_config)
        except BaseException:
            await stores.close()
            raise
        if not stores.dispatches.durable:
            log.warning(
                "store is %s: caps, lists and accepted dispatches live in this process only", s.store_url
            )
        renderer = _renderer(settings)
        decider = Decider(
            rules,
            stores.counters,
            stores.user_state,
            failure_policy=FailurePolicy(fail_open=s.fail_open_categories),
            shadow_all=s.shadow,
            allow_request_clock=s.allow_request_clock,
            learning_seed=None if s.learning_seed < 0 else s.learning_seed,
            prior_refresh_s=s.learning_prior_refresh_s,
            templates=renderer,
            telemetry=telemetry,
        )
        preferences = PreferenceCentre(
            stores.preferences, lambda: rules.current().ruleset, stores.dispatches, tokens
        )
        events = EventRecorder(rules, stores.counters, stores.behaviour, preferences)
        dispatcher = Dispatcher(stores.dispatches, decider, events)
        pool = None
        if s.senders > 0:
            pool = SenderPool(
                stores.dispatches,
                providers,
                decider,
                events,
                renderer=renderer,
                retry=retry,
                retry_by_channel=retry_by_channel,
                retry_budget=RetryBudget(s.retry_budget_ratio, s.retry_budget_min_per_s),
                concurrency=s.senders,
                telemetry=telemetry,
                unsubscribe=links,
            )
        recorder = None
        if s.decision_log:
            recorder = DecisionRecorder(
                stores.decisions, rules, telemetry.audit.key, on_counted=telemetry.counted
            )
            telemetry.add_hook(recorder)
            recorder.start()
        return cls(
            settings,
            rules,
            stores,
            providers,
            decider,
            events,
            dispatcher,
            pool,
            telemetry,
            recorder=recorder,
            preferences=preferences,
        )

    def serving(self) -> None:
        """Start-up is over: move what it built out of the collector's way (`heap.freeze`)."""
        if self.settings.gc_tuning:
            heap.freeze("start-up")

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.stop()
        await self.decider.close()
        for provider in self.providers.values():
            await provider.close()
        if self.recorder is not None:
            self.telemetry.remove_hook(self.recorder)
            await self.recorder.stop()
        await self.stores.close()
        if self.owns_telemetry:
            await self.telemetry.close()


def _freeze_after_reload(result: str) -> None:
    if result == "loaded":
        heap.freeze("rules reloaded")


def _unsubscribe_links(
    settings: Settings, rules: ActiveRules
) -> tuple[UnsubscribeTokens | None, UnsubscribeLinks | None]:
    """The token signer and e-mail's one-click links, both None without a secret. Raises
    `ConfigurationError` for a short secret, or one without a public URL to link to."""
    if not settings.unsubscribe_secret:
        return None, None
    if not settings.public_url:
        raise ConfigurationError(
            "SD_UNSUBSCRIBE_SECRET needs SD_PUBLIC_URL: the admin HTTP port as recipients reach it "
            "(links go to <SD_PUBLIC_URL>/unsubscribe?token=…)"
        )
    tokens = UnsubscribeTokens(settings.unsubscribe_secret, settings.unsubscribe_ttl_s)

    def required(category: str) -> bool:
        return category in rules.current().ruleset.required_categories

    return tokens, UnsubscribeLinks(tokens, settings.public_url, required)


def _providers_config(settings: Settings) -> Mapping[str, Any] | None:
    """The providers file's document (None without one), its custom channels declared
    (`domain.set_custom_channels`: rules, requests, events and preferences may name them; none
    without a file). Raises `ProviderConfigError`."""
    from smart_dispatch.channels.registry import custom_channels, read_providers_file

    if settings.providers_file is None:
        set_custom_channels(())
        return None
    file = str(settings.providers_file)
    config = read_providers_file(file)
    set_custom_channels(custom_channels(config, file=file))
    return config


def _providers(
    settings: Settings, stores: Stores, retry: RetryPolicy, config: Mapping[str, Any] | None
) -> tuple[dict[str, Provider], dict[str, RetryPolicy]]:
    """The providers per channel, and the channels' own retry policies (from the providers file)."""
    from smart_dispatch.channels.registry import (
        default_providers,
        providers_from_config,
        retry_policies_from_config,
    )

    if config is None:
        return default_providers(stores.inbox), {}
    file = str(settings.providers_file)
    providers = providers_from_config(config, os.environ, stores.inbox, file=file, limiter=stores.rate_limits)
    return providers, retry_policies_from_config(config, retry, file=file)


def _renderer(settings: Settings):  # type: ignore[no-untyped-def]
    if settings.templates_dir is None:
        return None
    from smart_dispatch.templates import TemplateRenderer

    return TemplateRenderer(settings.templates_dir)
