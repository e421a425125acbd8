"""The sidecar: the runtime (runtime.py) behind a gRPC server.

Lifecycle: `start()` loads the rules (failing fast on invalid files), connects the stores, serves
the admin HTTP port (`/metrics` and the web console, when SD_METRICS_PORT is set), binds the
gRPC port and only then reports SERVING on `grpc.health.v1`, then starts the sender pool and the
rules watcher. `stop()` reports NOT_SERVING, lets in-flight calls finish within the grace
period, closes the admin port, lets in-flight sends finish, then closes providers and stores.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch.api.admin import RulesAdminServicer
from smart_dispatch.api.auth import BearerAuthInterceptor
from smart_dispatch.api.decoding import add_service
from smart_dispatch.api.operations import Operations
from smart_dispatch.api.servicer import SmartDispatchServicer
from smart_dispatch.channels.receipts import ReceiptEndpoints, mount_receipts
from smart_dispatch.config import Settings
from smart_dispatch.console import mount_console
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.rules.active import ActiveRules
from smart_dispatch.rules.watch import RulesWatcher
from smart_dispatch.runtime import Runtime, stop_on_signals, unless_stopped
from smart_dispatch.security import load_tokens, server_credentials
from smart_dispatch.telemetry import Telemetry

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["SmartDispatchService"]
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["RulesAdminService"]
SERVICE_NAME = SERVICE.full_name
ADMIN_SERVICE_NAME = ADMIN_SERVICE.full_name


class App:
    """One sidecar instance. Use `async with App(settings) as app:` or start()/stop().
    Without `telemetry`, one is built from the settings and closed by `stop()`; a given one is
    left open for its owner."""

    def __init__(self, settings: Settings, telemetry: Telemetry | None = None) -> None:
        self.settings = settings
        self._telemetry = telemetry
        self.rules = ActiveRules.for_settings(settings)
        self.watcher = RulesWatcher(self.rules, poll_s=settings.rules_poll_s)
        self.runtime: Runtime | None = None
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        #: the admin port's `/receipts/<provider>` endpoints (None: no admin port, or no provider
        #: that takes receipts); `counts` per provider
        self.receipts: ReceiptEndpoints | None = None

    async def start(self) -> int:
        """Load rules, connect stores, bind and serve. Returns the bound port."""
        s = self.settings
        runtime = self.runtime = await Runtime.build(s, self.rules, self._telemetry)
        # Telemetry first, so refused calls are traced and counted too.
        telemetry_interceptor = runtime.telemetry.interceptor()
        interceptors: list[Any] = [] if telemetry_interceptor is None else [telemetry_interceptor]
        tokens = None if s.auth_tokens_file is None else load_tokens(s.auth_tokens_file, os.environ)
        if tokens is not None:
            interceptors.append(BearerAuthInterceptor(tokens))
        options = [("grpc.max_receive_message_length", s.max_request_bytes)]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        self.operations = Operations(runtime)
        if runtime.telemetry.admin is not None:
            if not runtime.telemetry.admin.started:
                mount_console(runtime.telemetry.admin, self.operations, tokens)
                self.receipts = mount_receipts(
                    runtime.telemetry.admin, runtime.providers, self.operations.delivery_receipt, s.public_url
                )
            try:
                await runtime.telemetry.start()
            except BaseException:
                await self.stop(grace_s=0)
                raise
        servicer = SmartDispatchServicer(self.operations)
        add_service(server, servicer, SERVICE)
        add_service(server, RulesAdminServicer(self.rules), ADMIN_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, ADMIN_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self.port = _bind(server, s)
        await server.start()
        self._server = server
        if s.health_port:
            await self._serve_plain_health(s.health_host or s.host, s.health_port)
        for name in ("", SERVICE_NAME, ADMIN_SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if runtime.pool is not None:
            runtime.pool.start()
        if s.watch_rules:
            self.watcher.start()
        runtime.serving()
        if s.shadow:
            log.warning("shadow mode: every rule is evaluated and reported, none is enforced")
        log.info("serving on %s:%d", s.host, self.port)
        return self.port

    @property
    def admin_port(self) -> int | None:
        """The admin HTTP port (`/metrics`, `/console/`) while serving; None when not configured."""
        return None if self.runtime is None else self.runtime.telemetry.metrics_port

    async def _serve_plain_health(self, host: str, port: int) -> None:
        """grpc.health.v1 alone, in plaintext: for probes that cannot speak TLS (Kubernetes gRPC
        probes, the image's HEALTHCHECK). It tells SERVING or not and nothing else."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.health_port = server.add_insecure_port(f"{host}:{port}")
        await server.start()
        self._health_server = server

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, finish in-flight calls (up to the grace period), then in-flight sends."""
        await self.watcher.stop()
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(self.settings.shutdown_grace_s if grace_s is None else grace_s)
            self._server = None
        if self.runtime is not None and self.runtime.telemetry.admin is not None:
            await self.runtime.telemetry.admin.close()  # also when the telemetry outlives this App
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        if self.runtime is not None:
            await self.runtime.close()
            self.runtime = None
        self.rules.close()

    async def run_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully. SIGHUP reloads the rules."""
        stop = stop_on_signals(self.watcher.reload_soon)
        started, _ = await unless_stopped(self.start(), stop)
        if not started:
            log.info("signal received during start-up: stopping")
            await self.stop(grace_s=0)
            return
        print(f"smart-dispatch listening on {self.settings.host}:{self.port}", flush=True)
        await stop.wait()
        log.info("signal received: draining")
        await self.stop()

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(grace_s=1.0)


def _bind(server: grpc.aio.Server, s: Settings) -> int:
    """Bind plain or TLS (mTLS with a client CA); a half-configured TLS is an error."""
    address = f"{s.host}:{s.port}"
    if s.tls_cert is None and s.tls_key is None:
        if s.tls_client_ca is not None:
            raise ConfigurationError("SD_TLS_CLIENT_CA needs SD_TLS_CERT and SD_TLS_KEY")
        return server.add_insecure_port(address)
    if s.tls_cert is None or s.tls_key is None:
        raise ConfigurationError("TLS needs both SD_TLS_CERT and SD_TLS_KEY")
    return server.add_secure_port(address, server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca))
