"""The inbox contract: append an item, list the newest items, watch for new ones.

An inbox is identified by its id (the recipient's `in_app` address). Items are kept newest-last
and capped at about `MAX_ITEMS` per inbox (older ones are dropped). Item ids are assigned by the
store, ordered by arrival, and opaque to callers; they look like Redis stream ids
(``<unix ms>-<sequence>``) in every store.

Idempotency: `append` with an `idempotency_key` already used for the same inbox returns the
first item's id and appends nothing, so a retried delivery never shows twice.

Failure modes: `InvalidRequestError` for an empty inbox id, a non-positive limit or a malformed
item id; a remote store raises `StoreUnavailableError` when it cannot answer in time and
`StoreError` for other failures.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from smart_dispatch.errors import InvalidRequestError, quote

MAX_ITEMS = 1000
"""Items kept per inbox (exactly in memory, approximately in Redis)."""


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One message in an inbox. `id` is "" until the store assigns one; `created_at` is UTC."""

    id: str
    dispatch_id: str
    message_id: str
    text: str
    title: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def parse_item_id(item_id: str, field_name: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` (or ``"<ms>"``) as a sortable pair. Raises `InvalidRequestError`
    naming `field_name` when `item_id` is not an item id."""
    ms, _, seq = item_id.partition("-")
    if not ms.isdigit() or not (seq.isdigit() or seq == ""):
        raise InvalidRequestError(field_name, f"{quote(item_id)} is not an inbox item id")
    return int(ms), int(seq or 0)


def check_inbox_id(inbox_id: str) -> None:
    if not inbox_id:
        raise InvalidRequestError("inbox_id", "must not be empty")


def check_limit(limit: int) -> int:
    """`limit` capped at `MAX_ITEMS`; raises `InvalidRequestError` when below 1."""
    if limit < 1:
        raise InvalidRequestError("limit", f"must be at least 1, got {limit}")
    return min(limit, MAX_ITEMS)


class InboxStore(abc.ABC):
    """Per-recipient inboxes. See the module docstring for ids, idempotency and failures."""

    @abc.abstractmethod
    async def append(self, inbox_id: str, item: InboxItem, *, idempotency_key: str = "") -> str:
        """Append `item` (its `id` is ignored) and return the id it was stored under. With an
        `idempotency_key` seen before for this inbox: return the earlier id, append nothing."""

    @abc.abstractmethod
    async def list(
        self, inbox_id: str, limit: int = 50, before_id: str | None = None
    ) -> builtins.list[InboxItem]:
        """Up to `limit` items, newest first; only items older than `before_id` when given
        (pass the last id of a page to get the next page). An unknown inbox is empty."""

    @abc.abstractmethod
    def watch(self, inbox_id: str, *, after_id: str | None = None) -> AsyncIterator[InboxItem]:
        """Yield items appended after `after_id` (default: after the newest item at the moment
        iteration starts), oldest first, waiting for new ones forever. Stop by closing the
        iterator (`aclose()`) or cancelling the task. Pass the newest id of a `list` page as
        `after_id` to follow an inbox without a gap."""

    async def close(self) -> None:
        """Release connections. Default: nothing to release."""
        return None
