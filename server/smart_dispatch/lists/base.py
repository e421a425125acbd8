"""Allow-list and deny-list membership.

An allow-listed user bypasses frequency caps; a deny-listed user is never sent anything
(SUPPRESS, reason `deny_listed`). Membership changes take effect on the next decision.
"""

from __future__ import annotations

import abc
from typing import Literal, get_args

ListName = Literal["allow", "deny"]
LIST_NAMES: tuple[str, ...] = get_args(ListName)


class ListStore(abc.ABC):
    """Implementations raise `StoreUnavailableError` when they cannot answer in time."""

    @abc.abstractmethod
    async def add(self, list_name: ListName, user_id: str) -> bool:
        """Add; True when the user was not a member before."""

    @abc.abstractmethod
    async def remove(self, list_name: ListName, user_id: str) -> bool:
        """Remove; True when the user was a member."""

    @abc.abstractmethod
    async def memberships(self, user_id: str) -> frozenset[str]:
        """The names of the lists `user_id` is on."""

    async def close(self) -> None:
        """Release connections. Default: nothing to release."""
        return None
