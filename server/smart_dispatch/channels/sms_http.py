"""SMS through a generic HTTP gateway.

One attempt is one request:

    POST <url>
    Authorization: Bearer <token>          (omitted when no token is configured)
    Idempotency-Key: <delivery.idempotency_key>
    {"to": "<phone>", "text": "<content.text>", "reference": "<message id>"}

`reference` lets the gateway's delivery receipts be reported back with `ReportEvent`.

Outcome: 2xx → sent, `provider_message_id` is the reply's JSON `id` ("" when absent); 429 →
retryable with Retry-After; 5xx, timeouts, connection errors → retryable; any other 4xx (400
invalid number, 401, 404) → permanent. An empty address fails permanently without a request.
"""

from __future__ import annotations

from dataclasses import dataclass

from smart_dispatch.channels.base import Delivery, SendResult
from smart_dispatch.channels.http_common import HttpOptions, HttpProvider, bearer


@dataclass(frozen=True, slots=True)
class SmsGatewayConfig:
    """`url` receives the POST; `token` is the bearer token ("" sends none)."""

    url: str
    token: str = ""


class SmsGatewayProvider(HttpProvider):
    """SMS over the HTTP gateway described in the module docstring."""

    def __init__(
        self,
        config: SmsGatewayConfig,
        *,
        options: HttpOptions | None = None,
        channel: str = "sms",
        name: str = "http_sms",
    ) -> None:
        super().__init__(channel=channel, name=name, options=options or HttpOptions())
        self.config = config

    async def send(self, delivery: Delivery) -> SendResult:
        self.phone_number(delivery)  # an empty one is a permanent error
        payload = {"to": delivery.address, "text": delivery.content.text, "reference": delivery.message_id}
        headers = {"Idempotency-Key": delivery.idempotency_key, **bearer(self.config.token)}
        reply = await self.post_json(self.config.url, payload, headers=headers)
        self.check(reply)
        return SendResult(self.name, reply.json_text("id"))
