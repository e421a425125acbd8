"""A real sidecar with telemetry wired the way `serve` wires it, but spans go to memory.

The SMS provider talks HTTP to a real sink on loopback; e-mail uses the in-package stub.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from smart_dispatch.app import App
from smart_dispatch.config import Settings
from smart_dispatch.telemetry import Telemetry

from tests.support.sinks import HttpSink

RULES = """
categories: [otp, promo, notice]
caps:
  - {name: promo_hourly, limit: 1, window: 1h}
rules:
  - name: otp_by_sms
    when: {category: otp}
    then: {prefer: [sms, email], fallback: [email], bypass_caps: true}
  - name: promo_by_email
    when: {category: promo}
    then: {prefer: [email, sms], fallback: [sms], caps: [promo_hourly], on_cap: drop}
  - name: notice_sms_only
    when: {category: notice}
    then: {only: [sms]}
"""
PHONE = "+15551234100"
EMAIL = "ada.lovelace@example.com"
INBOX = "inbox-ada-7781"
USER = "user-ada-4711"
ADDRESSES = {"sms": PHONE, "email": EMAIL, "in_app": INBOX}

LOG_KEY = "decision-log-test-key"


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "rules.yaml").write_text(RULES)
    return directory


@pytest.fixture
async def sink() -> AsyncIterator[HttpSink]:
    sink = await HttpSink().start()
    yield sink
    await sink.stop()


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "decisions.jsonl"


@pytest.fixture
def settings(tmp_path: Path, rules_dir: Path, sink: HttpSink, audit_path: Path) -> Settings:
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f'sms: {{type: http_sms, url: "{sink.url}/sms", timeout_s: 2}}\nemail: {{type: stub}}\n'
    )
    return Settings(
        host="127.0.0.1",
        port=0,
        rules_dir=rules_dir,
        store_url="memory://",
        watch_rules=False,
        providers_file=providers,
        senders=2,
        retry_attempts=3,
        retry_base_s=0.01,
        retry_max_s=0.05,
        send_timeout_s=2.0,
        audit_log=str(audit_path),
        log_key=LOG_KEY,
    )


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def telemetry(settings: Settings, spans: InMemorySpanExporter) -> AsyncIterator[Telemetry]:
    built = Telemetry.from_settings(settings, span_exporter=spans, metrics_port=0)
    yield built
    await built.close()


@pytest.fixture
async def app(settings: Settings, telemetry: Telemetry) -> AsyncIterator[App]:
    async with App(settings, telemetry) as running:
        yield running
