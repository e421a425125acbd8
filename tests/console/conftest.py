"""The console's world: a real sidecar (gRPC port and admin HTTP port), an SMS gateway on
loopback that can be told to refuse, bearer tokens for an operator and a viewer, and a real
headless Chromium (tests/support/browser.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App
from smart_dispatch.config import Settings
from smart_dispatch.telemetry import Telemetry

from tests.e2e.decide_builders import decide_request
from tests.support.browser import require_chromium
from tests.support.sinks import HttpSink

RULES = """
categories: [alert, promo]
caps:
  - {name: sms_per_day, limit: 5, window: 1d}
  - {name: promo_per_hour, limit: 1, window: 1h}
rules:
  - name: alert_by_sms
    when: {category: alert}
    then: {prefer: [sms], caps: [sms_per_day]}
  - name: promo_by_sms
    when: {category: promo}
    then: {prefer: [sms], caps: [sms_per_day, promo_per_hour], on_cap: defer}
"""
OPERATOR_TOKEN = "op-3f9c1e0b7d2a4c58a1e6b9d0c3f2a7e1"
VIEWER_TOKEN = "view-8b1d4e7a2c5f3b9e6d0a1c4f7e2b5d8a"
TOKENS = """
tokens:
  - {name: operator, token_env: SD_TEST_CONSOLE_OPERATOR, scopes: [decide, admin]}
  - {name: viewer, token_env: SD_TEST_CONSOLE_VIEWER, scopes: [read]}
"""
S = pb.DispatchState
_MOVING = (S.DISPATCH_STATE_QUEUED, S.DISPATCH_STATE_SCHEDULED, S.DISPATCH_STATE_SENDING)


@dataclass
class Sidecar:
    app: App
    sink: HttpSink
    stub: pb_grpc.SmartDispatchServiceStub
    secured: bool

    @property
    def base(self) -> str:
        """The admin HTTP port's URL."""
        return f"http://127.0.0.1:{self.app.admin_port}"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {OPERATOR_TOKEN}"),) if self.secured else ()

    async def dispatch(self, category: str, message_id: str, user: str = "u-ada") -> pb.DispatchResponse:
        decide = decide_request(category, user=user, message_id=message_id, addresses={"sms": "+15550100"})
        request = pb.DispatchRequest(message=decide.message, recipient=decide.recipient)
        return await self.stub.Dispatch(request, metadata=self.metadata)

    async def status(self, dispatch_id: str) -> pb.DispatchStatus:
        reply = await self.stub.GetDispatch(
            pb.GetDispatchRequest(dispatch_id=dispatch_id), metadata=self.metadata
        )
        return reply.status

    async def settled(self, dispatch_id: str, timeout_s: float = 10.0) -> pb.DispatchStatus:
        deadline = time.monotonic() + timeout_s
        while (status := await self.status(dispatch_id)).state in _MOVING:
            if time.monotonic() > deadline:
                raise AssertionError(f"dispatch {dispatch_id} not settled: {status}")
            await asyncio.sleep(0.02)
        return status


@asynccontextmanager
async def running_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, secured: bool = True, **overrides: Any
) -> AsyncIterator[Sidecar]:
    """A sidecar whose SMS goes to a gateway on loopback; `secured`: with the tokens file."""
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "rules.yaml").write_text(RULES)
    sink = await HttpSink().start()
    providers = tmp_path / "providers.yaml"
    providers.write_text(f'sms: {{type: http_sms, url: "{sink.url}/sms", timeout_s: 2}}\n')
    tokens = None
    if secured:
        tokens = tmp_path / "tokens.yaml"
        tokens.write_text(TOKENS)
        monkeypatch.setenv("SD_TEST_CONSOLE_OPERATOR", OPERATOR_TOKEN)
        monkeypatch.setenv("SD_TEST_CONSOLE_VIEWER", VIEWER_TOKEN)
    settings = Settings(
        host="127.0.0.1",
        port=0,
        rules_dir=rules,
        store_url="memory://",
        watch_rules=False,
        providers_file=providers,
        senders=2,
        retry_attempts=1,
        retry_base_s=0.01,
        send_timeout_s=2.0,
        auth_tokens_file=tokens,
    )
    settings = replace(settings, **overrides)
    # metrics_port=0: the admin HTTP port on any free port (Settings.metrics_port=0 means none)
    telemetry = Telemetry.from_settings(settings, metrics_port=0)
    try:
        async with App(settings, telemetry) as app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield Sidecar(app, sink, pb_grpc.SmartDispatchServiceStub(ch), secured)
    finally:
        await telemetry.close()
        await sink.stop()


@pytest.fixture
async def sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sidecar]:
    async with running_sidecar(tmp_path, monkeypatch) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium (Debian's) under Playwright; one context per test via `page`."""
    executable = require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield await context.new_page()
    finally:
        await context.close()
