"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest

from tests.support.redis_servers import require_redis


@pytest.fixture
def require_redis_binary() -> None:
    """Skip locally, fail under CI=true, when redis-server is missing."""
    require_redis()
