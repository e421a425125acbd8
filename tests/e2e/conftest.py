"""A real sidecar on a free port (in this process, memory store) and a real gRPC channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from smart_dispatch.app import App
from smart_dispatch.config import Settings

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules"


@pytest.fixture
def settings() -> Settings:
    """Override in a test module (or use `replace`) to run the server differently."""
    return Settings(host="127.0.0.1", port=0, rules_dir=SHIPPED_RULES, store_url="memory://")


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    async with App(settings) as running:
        yield running


@pytest.fixture
def make_app() -> Callable[..., App]:
    """Build an extra App with setting overrides (the test starts and stops it)."""

    def build(**overrides: object) -> App:
        base = Settings(host="127.0.0.1", port=0, rules_dir=SHIPPED_RULES, store_url="memory://")
        return App(replace(base, **overrides))  # type: ignore[arg-type]

    return build
