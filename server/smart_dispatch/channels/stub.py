"""A provider that delivers nowhere: it records deliveries in memory and can be told to fail.

It honours the real contract (one attempt per call, only `ProviderError`), so it stands in for
real providers in users' own tests and in `make serve` on a machine without SMS gateways or
SMTP servers:

    stub = StubProvider("sms")
    stub.fail_next(2, retryable=True, retry_after_s=1.0)   # two retryable failures, then success
    ...
    await stub.wait_for(1, timeout_s=5)
    assert stub.delivered[0].message_id == "m1"

`delivered` keeps every successful attempt in order, repeats of one idempotency key included
(so a test can see a duplicate); `attempts` counts every call, failed ones too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from smart_dispatch.channels.base import Delivery, Provider, ProviderError, SendResult

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Failure:
    retryable: bool
    retry_after_s: float | None
    code: str


class StubProvider(Provider):
    """Records deliveries on `channel`. `delay_s` (seconds) is waited before each attempt."""

    def __init__(self, channel: str, *, name: str = "stub", delay_s: float = 0.0) -> None:
        self.channel = channel
        self.name = name
        self.delay_s = delay_s
        self.delivered: list[Delivery] = []
        self.attempts = 0
        self._failures: deque[_Failure] = deque()
        self._changed = asyncio.Condition()

    def fail_next(
        self,
        times: int = 1,
        *,
        retryable: bool = True,
        retry_after_s: float | None = None,
        code: str = "stub",
    ) -> None:
        """Make the next `times` attempts fail with a retryable or permanent `ProviderError`."""
        self._failures.extend(_Failure(retryable, retry_after_s, code) for _ in range(times))

    async def send(self, delivery: Delivery) -> SendResult:
        self.attempts += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self._failures:
            failure = self._failures.popleft()
            raise ProviderError(
                "failure requested by the test",
                provider=self.name,
                channel=self.channel,
                retryable=failure.retryable,
                retry_after_s=failure.retry_after_s,
                code=failure.code,
            )
        self.delivered.append(delivery)
        log.info("stub %s delivery of message %s (not really sent)", self.channel, delivery.message_id)
        async with self._changed:
            self._changed.notify_all()
        return SendResult(self.name, f"stub-{len(self.delivered)}")

    async def wait_for(self, count: int, *, timeout_s: float = 5.0) -> list[Delivery]:
        """Wait until at least `count` deliveries are recorded; raises `TimeoutError` after
        `timeout_s` seconds."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.delivered) >= count)
        return list(self.delivered)
