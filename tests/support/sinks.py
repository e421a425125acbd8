"""Real servers on loopback playing providers: an HTTP sink (SMS gateway, webhook receiver, …)
and an SMTP mailbox. Nothing of ours is mocked: the providers speak their real protocols to them.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from multidict import CIMultiDictProxy


@dataclass(frozen=True)
class Received:
    """One HTTP request as the sink saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[Received], Awaitable[web.StreamResponse]]


async def accept(_: Received) -> web.StreamResponse:
    return web.json_response({"id": "ok"})


@dataclass
class HttpSink:
    """An HTTP server on 127.0.0.1 answering every path with `handler`, recording requests.
    `script` (status codes) answers the next requests first, e.g. [500, 500] then `handler`."""

    handler: Handler = accept
    requests: list[Received] = field(default_factory=list)
    script: deque[int] = field(default_factory=deque)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> HttpSink:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(
            request.method, request.path, dict(request.query), request.headers, await request.read()
        )
        self.requests.append(received)
        if self.script:
            return web.json_response({"error": "scripted"}, status=self.script.popleft())
        return await self.handler(received)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Mailbox:
    """An aiosmtpd handler keeping accepted mail; `refuse` maps a recipient to an SMTP reply."""

    def __init__(self) -> None:
        self.received: list[tuple[Envelope, Session]] = []
        self.refuse: dict[str, str] = {}
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append((envelope, session))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"pw-from-env", handled=False)

    def message(self, index: int = 0) -> EmailMessage:
        envelope, _session = self.received[index]
        assert isinstance(envelope.content, bytes)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


async def start_smtp(mailbox: Mailbox) -> tuple[asyncio.Server, int]:
    """An SMTP server for `mailbox` on a free loopback port, in this event loop."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(mailbox, hostname="mx.test"), "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])
