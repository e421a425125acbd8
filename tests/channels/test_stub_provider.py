"""The in-package stub provider honours the provider contract."""

from __future__ import annotations

import asyncio

import pytest
from smart_dispatch.channels.base import ProviderError
from smart_dispatch.channels.stub import StubProvider

from tests.channels.helpers import delivery


async def test_records_deliveries() -> None:
    stub = StubProvider("sms")

    result = await stub.send(delivery("sms", message_id="m-7"))

    assert (result.provider, result.provider_message_id) == ("stub", "stub-1")
    assert [d.message_id for d in stub.delivered] == ["m-7"]


async def test_fails_as_told_then_delivers() -> None:
    stub = StubProvider("email")
    stub.fail_next(2, retryable=True, retry_after_s=1.5)
    stub.fail_next(1, retryable=False, code="550")
    outcomes = []

    for _ in range(4):
        try:
            await stub.send(delivery("email"))
            outcomes.append("sent")
        except ProviderError as error:
            outcomes.append((error.retryable, error.retry_after_s, error.code, error.channel))

    assert outcomes == [
        (True, 1.5, "stub", "email"),
        (True, 1.5, "stub", "email"),
        (False, None, "550", "email"),
        "sent",
    ]
    assert (stub.attempts, len(stub.delivered)) == (4, 1)


async def test_wait_for_returns_once_enough_deliveries_arrived() -> None:
    stub = StubProvider("push", delay_s=0.01)

    sender = asyncio.create_task(stub.send(delivery("push")))
    delivered = await stub.wait_for(1, timeout_s=2)

    await sender
    assert len(delivered) == 1
    with pytest.raises(TimeoutError):
        await stub.wait_for(2, timeout_s=0.05)
