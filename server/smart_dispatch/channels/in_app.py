"""The in-app inbox provider: a delivery is an item appended to the recipient's inbox.

The address is the inbox id. The item carries the content's `text`, `title` and `fields` (as
`data`), the dispatch and message ids, and is appended with the delivery's idempotency key, so
a retried step shows once. Apps read the inbox with `ListInbox` / `StreamInbox`.

Outcome: appended → sent, `provider_message_id` is the item id. An empty address fails
permanently; every store failure is retryable (code ``store``): the inbox is our own store, a
delivery to it can always succeed later.
"""

from __future__ import annotations

from datetime import UTC, datetime

from smart_dispatch.channels.base import Delivery, Provider, ProviderError, SendResult
from smart_dispatch.errors import SmartDispatchError
from smart_dispatch.inbox.base import InboxItem, InboxStore


class InboxProvider(Provider):
    """Delivers to `inbox` (not closed by `close`: the app owns the store)."""

    def __init__(self, inbox: InboxStore, *, channel: str = "in_app", name: str = "inbox") -> None:
        self.channel = channel
        self.name = name
        self.inbox = inbox

    async def send(self, delivery: Delivery) -> SendResult:
        if not delivery.address:
            raise ProviderError(
                "empty inbox id",
                provider=self.name,
                channel=self.channel,
                retryable=False,
                code="invalid_address",
            )
        item = InboxItem(
            id="",
            dispatch_id=delivery.dispatch_id,
            message_id=delivery.message_id,
            text=delivery.content.text,
            title=delivery.content.title,
            data=dict(delivery.content.fields),
            created_at=datetime.now(UTC),
        )
        try:
            item_id = await self.inbox.append(
                delivery.address, item, idempotency_key=delivery.idempotency_key
            )
        except SmartDispatchError as exc:
            raise ProviderError(
                f"inbox store failed: {exc}",
                provider=self.name,
                channel=self.channel,
                retryable=True,
                code="store",
            ) from exc
        return SendResult(self.name, item_id)
