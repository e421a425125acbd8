"""The admin HTTP port (`SD_METRICS_PORT` on `SD_HOST`): one aiohttp application.

Telemetry builds it with `/metrics` (telemetry/metrics.py); a `serve` process adds the web
console (console/) and the one-click unsubscribe endpoint before it starts. Routes can only be
added before `start()` (aiohttp freezes an application when it starts serving). Plain HTTP:
put it behind a TLS proxy, or keep it on a private address, where operators reach it.
"""

from __future__ import annotations

import logging

from aiohttp import web

log = logging.getLogger(__name__)
#: The largest request body read (login and re-drive forms are a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024
#: How long `close()` lets requests in flight finish.
_SHUTDOWN_S = 1.0


class AdminServer:
    """An aiohttp application bound on `host:port` (port 0: any free port, see `port`)."""

    def __init__(self, host: str, port: int) -> None:
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    @property
    def started(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int | None:
        """The bound port once started."""
        if self._runner is None or not self._runner.addresses:
            return None
        return int(self._runner.addresses[0][1])

    def add_routes(self, routes: list[web.RouteDef]) -> None:
        """Add routes; only before `start()`. Raises RuntimeError once serving."""
        if self.started:
            raise RuntimeError("the admin HTTP port is serving already: add routes before start()")
        self.app.add_routes(routes)

    def mount(self, prefix: str, app: web.Application) -> None:
        """Serve `app` under `prefix` (its own middlewares apply to its routes only); only
        before `start()`."""
        if self.started:
            raise RuntimeError("the admin HTTP port is serving already: mount before start()")
        self.app.add_subapp(prefix, app)

    async def start(self) -> int:
        """Bind and serve; returns the bound port. Idempotent. Raises OSError when the port is
        taken."""
        if self._runner is None:
            runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=_SHUTDOWN_S)
            await runner.setup()
            try:
                await web.TCPSite(runner, self._host, self._port).start()
            except BaseException:
                await runner.cleanup()
                raise
            self._runner = runner
            log.info("admin HTTP on http://%s:%d/ (/metrics)", self._host, self.port)
        port = self.port
        assert port is not None
        return port

    async def close(self) -> None:
        """Stop serving (requests in flight get up to a second). Idempotent."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
