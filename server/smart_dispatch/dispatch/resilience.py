"""Retry policy with jittered exponential backoff, and a per-provider circuit breaker. Pure."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from smart_dispatch.channels.base import ProviderError

#: A provider's Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_attempts` per plan step (the first try included); delays in seconds;
    `timeout_s` bounds one provider call."""

    max_attempts: int = 3
    base_s: float = 0.5
    max_s: float = 60.0
    multiplier: float = 2.0
    timeout_s: float = 10.0


def compute_backoff(
    failures: int,
    policy: RetryPolicy,
    retry_after_s: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before the next attempt after `failures` failed attempts (>= 1):
    "full jitter" (uniform in [0, min(max, base * multiplier^(failures-1))]), but never less
    than the provider's Retry-After (itself capped at `MAX_RETRY_AFTER_S`)."""
    ceiling = min(policy.max_s, policy.base_s * policy.multiplier ** max(0, failures - 1))
    delay = rand() * ceiling
    return max(delay, min(retry_after_s or 0.0, MAX_RETRY_AFTER_S))


class RetryBudget:
    """Retries allowed in proportion to first attempts, so that a provider outage does not
    multiply the load on it (Finagle's and gRPC's retry budgets): every first attempt deposits
    `ratio` of a retry, every retry withdraws one; besides, `min_per_s` retries a second are
    always allowed (a quiet sidecar can still retry). The balance is capped at 10 s of
    `min_per_s`, so a long quiet spell does not bank a storm of retries."""

    def __init__(
        self, ratio: float = 0.2, min_per_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self._clock = clock
        self._cap = max(1.0, 10.0 * min_per_s)
        self._balance = self._cap
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._balance = min(self._cap, self._balance + (now - self._at) * self.min_per_s)
        self._at = now

    def deposit(self) -> None:
        """A first attempt was made."""
        self._refill()
        self._balance = min(self._cap, self._balance + self.ratio)

    def withdraw(self) -> bool:
        """True (and one retry taken) when a retry is allowed now."""
        self._refill()
        if self._balance < 1.0:
            return False
        self._balance -= 1.0
        return True


class CircuitOpenError(ProviderError):
    """The channel's circuit breaker is open: the provider was not called. Retryable, but with
    another channel to fall back to the plan moves on rather than waiting for it."""

    def __init__(self, provider: str, channel: str) -> None:
        super().__init__(
            "circuit open", provider=provider, channel=channel, retryable=True, code="circuit_open"
        )


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures (the sender pool counts only
    retryable ones: a provider that rejects a message has answered); while open, calls are refused for
    `reset_after_s`; then one trial call is let through (half-open): success closes it, failure
    opens it again."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self.reset_after_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def release(self) -> None:
        """An attempt that says nothing about the provider's health (it refused this message, or
        the attempt ended before an answer): counts neither way, but frees the half-open trial."""
        self._trial_running = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
        self._trial_running = False

    def retry_in_s(self) -> float:
        """Seconds until a trial call will be allowed (0 when closed)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.reset_after_s - (self._clock() - self._opened_at))
