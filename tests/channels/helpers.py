"""Helpers for the provider tests: a closed port and a delivery builder. The loopback HTTP sink
is `tests.support.sinks.HttpSink`; the redis rule is `tests.support.redis_servers.require_redis`."""

from __future__ import annotations

from typing import Any

from smart_dispatch.channels.base import Content, Delivery

from tests.support.redis_servers import free_port
from tests.support.sinks import Handler, HttpSink, Received

__all__ = ["Handler", "HttpSink", "Received", "closed_port_url", "delivery"]


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
