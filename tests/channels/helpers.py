"""Helpers for the provider tests: an HTTP sink on loopback, a delivery builder, and the rule
for tests needing `redis-server` (skip locally when it is missing, FAIL under `CI=true`)."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from smart_dispatch.channels.base import Content, Delivery

from tests.support import redis_servers
from tests.support.redis_servers import free_port


@dataclass(frozen=True)
class Received:
    """One request as the sink saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[Received], Awaitable[web.StreamResponse]]


@dataclass
class HttpSink:
    """An HTTP server on 127.0.0.1 answering every path with `handler`, recording requests."""

    handler: Handler
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> HttpSink:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(
            request.method, request.path, dict(request.query), request.headers, await request.read()
        )
        self.requests.append(received)
        return await self.handler(received)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def closed_port_url(path: str = "/") -> str:
    """A loopback URL nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}{path}"


def delivery(
    channel: str = "sms", address: str = "+15550100", content: Content | None = None, **overrides: Any
) -> Delivery:
    values: dict[str, Any] = {
        "dispatch_id": "d-1",
        "message_id": "m-1",
        "user_id": "u-1",
        "channel": channel,
        "address": address,
        "content": content or Content(text="Your code is 123"),
        "idempotency_key": "d-1:0",
    }
    values.update(overrides)
    return Delivery(**values)


def require_redis() -> None:
    """Skip locally, fail in CI, when the redis binaries are missing."""
    if redis_servers.available():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {redis_servers.MISSING_REASON}")
    pytest.skip(redis_servers.MISSING_REASON)
