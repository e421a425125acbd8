"""Settings: one frozen object built once (defaults < environment < command line).

Environment variables (all optional):
    SD_HOST, SD_PORT, SD_RULES (directory), SD_STORE_URL, SD_STORE_TIMEOUT_S, SD_KEY_PREFIX,
    SD_ALLOW_LIST / SD_DENY_LIST (comma-separated user ids), SD_FAIL_OPEN (comma-separated
    categories sent anyway while the store is down), SD_SHUTDOWN_GRACE_S, SD_LOG_LEVEL,
    SD_RULES_POLL_S (backstop content check of the rules directory), SD_WATCH_RULES (true/false),
    SD_SHADOW (true: evaluate and report every rule, enforce none), SD_SENDERS (sender workers
    in this process, 0 for none), SD_PROVIDERS (providers file), SD_TEMPLATES (template
    directory), SD_CLAIM_TIMEOUT_S (a claimed dispatch not finished in this time is re-sent),
    SD_RETRY_ATTEMPTS / SD_RETRY_BASE_S / SD_RETRY_MAX_S (per plan step: attempts, backoff base
    and ceiling), SD_SEND_TIMEOUT_S (one provider call).
    Security: SD_TLS_CERT + SD_TLS_KEY (PEM; serve TLS), SD_TLS_CLIENT_CA (also require client
    certificates signed by it: mTLS), SD_AUTH_TOKENS (bearer-token file, see security.py).
    SD_WORKERS: sidecar processes sharing the port (needs a Redis store when above 1).
    Telemetry: SD_OTEL_EXPORTER (otlp-grpc | otlp-http | console | none), SD_OTEL_ENDPOINT (empty:
    the exporter's default or OTEL_EXPORTER_OTLP_* variables), SD_TRACE_SAMPLE_RATIO (0..1, for
    traces the caller did not sample already), SD_METRICS_PORT (the admin HTTP port on
    SD_HOST: Prometheus `/metrics`, the web console `/console/`, `/unsubscribe`; 0 for none),
    SD_AUDIT_LOG (decision log file, `-` for stdout, empty for none).
    Decision log (in the store; `GetDecision`, replay, analytics): SD_DECISION_LOG (true; false:
    neither log nor analytics, e.g. in simulations), SD_LOG_KEY (the HMAC key of
    the user-id pseudonyms; unset: random per process), SD_DECISION_LOG_RETENTION_S (default 7
    days) and SD_DECISION_LOG_MAX_ENTRIES (default 1,000,000): whichever bound is hit first.
    Rule loading: SD_RULES_COMPILE_TIMEOUT_S and SD_RULES_COMPILE_MEMORY_MB (the budget of the
    child process that tries every candidate ruleset first, see rules/guard.py).
    SD_MAX_REQUEST_BYTES: the largest request accepted (default 1 MiB; larger ones are
    RESOURCE_EXHAUSTED before they are decoded).
    SD_ALLOW_REQUEST_CLOCK (true: `DecideRequest.at` sets the decision's clock; for simulation
    and replay, never for live traffic).
    SD_LEARNING_SEED: seed of the learned choice's sampling (>= 0: each decision's draws depend
    only on it and the message id, for reproducible tests and simulations; -1: random).
    SD_LEARNING_PRIOR_REFRESH_S: how often a sidecar re-reads the population prior (default 5).
    Health: SD_HEALTH_PORT (a plaintext grpc.health.v1-only port on SD_HEALTH_HOST, default
    SD_HOST; 0 for none), for probes that cannot speak TLS.
    Unsubscribe links (preferences): SD_UNSUBSCRIBE_SECRET (the HMAC key of the tokens, at least
    16 bytes; unset: e-mail carries no List-Unsubscribe), SD_PUBLIC_URL (the admin HTTP port as
    recipients reach it, e.g. https://notify.example.com: links go to <it>/unsubscribe?token=…;
    needed with a secret), SD_UNSUBSCRIBE_TTL_S (how long a link works, default 60 days).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from smart_dispatch.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    rules_dir: Path = Path("rules")
    store_url: str = "memory://"
    store_timeout_s: float = 0.25
    key_prefix: str = "sd"
    allow_list: tuple[str, ...] = ()
    deny_list: tuple[str, ...] = ()
    fail_open_categories: frozenset[str] = field(default_factory=lambda: frozenset({"otp", "alert"}))
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    rules_poll_s: float = 5.0
    watch_rules: bool = True
    shadow: bool = False
    senders: int = 8
    providers_file: Path | None = None
    templates_dir: Path | None = None
    claim_timeout_s: float = 30.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_tokens_file: Path | None = None
    workers: int = 1
    retry_attempts: int = 3
    retry_base_s: float = 0.5
    retry_max_s: float = 60.0
    send_timeout_s: float = 10.0
    retry_budget_ratio: float = 0.2
    retry_budget_min_per_s: float = 10.0
    otel_exporter: str = "none"
    otel_endpoint: str = ""
    trace_sample_ratio: float = 1.0
    metrics_port: int = 0
    audit_log: str = ""
    log_key: str = ""
    decision_log: bool = True
    #: collect less often and freeze start-up's objects (heap.py); off only to measure it
    gc_tuning: bool = True
    #: the event loop: uvloop (libuv) or asyncio (the standard library's)
    event_loop: str = "uvloop"
    decision_log_retention_s: float = 7 * 86400.0
    decision_log_max_entries: int = 1_000_000
    rules_compile_timeout_s: float = 30.0
    rules_compile_memory_mb: int = 1024
    health_port: int = 0
    max_request_bytes: int = 1024 * 1024
    allow_request_clock: bool = False
    learning_seed: int = -1
    learning_prior_refresh_s: float = 5.0
    health_host: str = ""
    unsubscribe_secret: str = field(default="", repr=False)
    public_url: str = ""
    unsubscribe_ttl_s: float = 60 * 86400.0

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with every override that is not None applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


_ENV = {
    "host": "SD_HOST",
    "port": "SD_PORT",
    "rules_dir": "SD_RULES",
    "store_url": "SD_STORE_URL",
    "store_timeout_s": "SD_STORE_TIMEOUT_S",
    "key_prefix": "SD_KEY_PREFIX",
    "allow_list": "SD_ALLOW_LIST",
    "deny_list": "SD_DENY_LIST",
    "fail_open_categories": "SD_FAIL_OPEN",
    "shutdown_grace_s": "SD_SHUTDOWN_GRACE_S",
    "log_level": "SD_LOG_LEVEL",
    "rules_poll_s": "SD_RULES_POLL_S",
    "watch_rules": "SD_WATCH_RULES",
    "shadow": "SD_SHADOW",
    "senders": "SD_SENDERS",
    "providers_file": "SD_PROVIDERS",
    "templates_dir": "SD_TEMPLATES",
    "claim_timeout_s": "SD_CLAIM_TIMEOUT_S",
    "tls_cert": "SD_TLS_CERT",
    "tls_key": "SD_TLS_KEY",
    "tls_client_ca": "SD_TLS_CLIENT_CA",
    "auth_tokens_file": "SD_AUTH_TOKENS",
    "workers": "SD_WORKERS",
    "retry_attempts": "SD_RETRY_ATTEMPTS",
    "retry_base_s": "SD_RETRY_BASE_S",
    "retry_max_s": "SD_RETRY_MAX_S",
    "send_timeout_s": "SD_SEND_TIMEOUT_S",
    "retry_budget_ratio": "SD_RETRY_BUDGET_RATIO",
    "retry_budget_min_per_s": "SD_RETRY_BUDGET_MIN_PER_S",
    "otel_exporter": "SD_OTEL_EXPORTER",
    "otel_endpoint": "SD_OTEL_ENDPOINT",
    "trace_sample_ratio": "SD_TRACE_SAMPLE_RATIO",
    "metrics_port": "SD_METRICS_PORT",
    "audit_log": "SD_AUDIT_LOG",
    "log_key": "SD_LOG_KEY",
    "decision_log": "SD_DECISION_LOG",
    "gc_tuning": "SD_GC_TUNING",
    "event_loop": "SD_EVENT_LOOP",
    "decision_log_retention_s": "SD_DECISION_LOG_RETENTION_S",
    "decision_log_max_entries": "SD_DECISION_LOG_MAX_ENTRIES",
    "rules_compile_timeout_s": "SD_RULES_COMPILE_TIMEOUT_S",
    "rules_compile_memory_mb": "SD_RULES_COMPILE_MEMORY_MB",
    "health_port": "SD_HEALTH_PORT",
    "max_request_bytes": "SD_MAX_REQUEST_BYTES",
    "allow_request_clock": "SD_ALLOW_REQUEST_CLOCK",
    "learning_seed": "SD_LEARNING_SEED",
    "learning_prior_refresh_s": "SD_LEARNING_PRIOR_REFRESH_S",
    "health_host": "SD_HEALTH_HOST",
    "unsubscribe_secret": "SD_UNSUBSCRIBE_SECRET",
    "public_url": "SD_PUBLIC_URL",
    "unsubscribe_ttl_s": "SD_UNSUBSCRIBE_TTL_S",
}


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Defaults overridden by `SD_*` variables; a malformed value raises ConfigurationError."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    defaults = Settings()
    for f in fields(Settings):
        raw = env.get(_ENV[f.name])
        if raw is None or raw == "":
            continue
        current = getattr(defaults, f.name)
        if current is None:  # optional paths
            current = Path()
        try:
            values[f.name] = _parse(raw, current)
        except ValueError as exc:
            raise ConfigurationError(f"{_ENV[f.name]}={raw!r}: {exc}") from exc
    return replace(defaults, **values)


def _parse(raw: str, like: Any, name: str = "") -> Any:
    if isinstance(like, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, float):
        return float(raw)
    if isinstance(like, Path):
        return Path(raw)
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(like, frozenset):
        return frozenset(items)
    if isinstance(like, tuple):
        return items
    return raw
