"""Push notifications through an HTTP API in the shape of FCM HTTP v1.

    POST <api_base>/v1/projects/<project>/messages:send
    Authorization: Bearer <token>
    Idempotency-Key: <delivery.idempotency_key>
    {"message": {"token": "<device token>",
                 "notification": {"title": "<content.title>", "body": "<content.text>"},
                 "data": {"<field>": "<text>", ..., "sd_message_id": "...", "sd_dispatch_id": "..."}}}

An empty title or body is left out of `notification`. FCM `data` values must be strings: text
fields pass through, other values are sent as JSON. The `sd_message_id` / `sd_dispatch_id`
entries let the app report `opened` / `clicked` with `ReportEvent`.

The bearer token is taken as configured (an OAuth2 access token minted outside Smart Dispatch, or
whatever a compatible gateway expects). FCM itself has no idempotency key; the header is sent for
gateways that deduplicate.

Outcome: 2xx → sent, `provider_message_id` is the reply's `name`
(``projects/<project>/messages/<id>``); 404 (``UNREGISTERED``: the app was uninstalled), 400
(``INVALID_ARGUMENT``), 401/403 → permanent; 429 (``QUOTA_EXCEEDED``) / 503 (``UNAVAILABLE``) with
Retry-After, other 5xx, timeouts, connection errors → retryable. The error `code` is FCM's
``errorCode`` detail when present, else the error ``status``, else the HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from smart_dispatch.channels.base import Delivery, SendResult
from smart_dispatch.channels.http_common import HttpOptions, HttpProvider, HttpReply, bearer

DEFAULT_API_BASE = "https://fcm.googleapis.com"


@dataclass(frozen=True, slots=True)
class FcmConfig:
    """`project` is the FCM project id; `token` the bearer token; `api_base` has no trailing path."""

    project: str
    token: str
    api_base: str = DEFAULT_API_BASE


def fcm_error_code(reply: HttpReply) -> str:
    """FCM's most specific error code in `reply` (errorCode detail > status > HTTP status). Pure."""
    error = reply.json_object().get("error")
    if isinstance(error, Mapping):
        details = error.get("details")
        for detail in details if isinstance(details, list) else []:
            if isinstance(detail, Mapping) and detail.get("errorCode"):
                return str(detail["errorCode"])
        if error.get("status"):
            return str(error["status"])
    return str(reply.status)


def data_strings(fields: Mapping[str, Any]) -> dict[str, str]:
    """FCM data values must be strings: text passes through, anything else becomes JSON."""
    return {
        str(key): value if isinstance(value, str) else json.dumps(value, default=str)
        for key, value in fields.items()
    }


class FcmProvider(HttpProvider):
    """Push in the shape of FCM HTTP v1, see the module docstring."""

    def __init__(
        self,
        config: FcmConfig,
        *,
        options: HttpOptions | None = None,
        channel: str = "push",
        name: str = "fcm",
    ) -> None:
        super().__init__(channel=channel, name=name, options=options or HttpOptions())
        self.config = config
        base = config.api_base.rstrip("/")
        self._url = f"{base}/v1/projects/{quote(config.project, safe='')}/messages:send"

    async def send(self, delivery: Delivery) -> SendResult:
        if not delivery.address.strip():
            raise self.error("empty device token", retryable=False, code="invalid_address")
        content = delivery.content
        data = data_strings(content.fields)
        data.update(sd_message_id=delivery.message_id, sd_dispatch_id=delivery.dispatch_id)
        notification = {
            key: value for key, value in (("title", content.title), ("body", content.text)) if value
        }
        message = {"token": delivery.address, "notification": notification, "data": data}
        headers = {"Idempotency-Key": delivery.idempotency_key, **bearer(self.config.token)}
        reply = await self.post_json(self._url, {"message": message}, headers=headers)
        if not reply.ok:
            error = reply.json_object().get("error")
            detail = str(error.get("message", "")) if isinstance(error, Mapping) else ""
            self.check(reply, code=fcm_error_code(reply), detail=detail)
        return SendResult(self.name, reply.json_text("name"))
