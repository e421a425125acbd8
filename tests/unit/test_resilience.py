"""The per-provider circuit breaker (dispatch/resilience.py), on a clock the test moves."""

from __future__ import annotations

from smart_dispatch.dispatch.resilience import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def opened(clock: Clock, threshold: int = 3) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=threshold, reset_after_s=30.0, clock=clock)
    for _ in range(threshold):
        assert breaker.allow()
        breaker.record_failure()
    return breaker


def test_it_opens_after_the_threshold_of_consecutive_failures_only():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=30.0, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # the run is broken
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()

    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.retry_in_s() == 30.0


def test_after_the_reset_time_one_trial_goes_through_and_its_outcome_decides():
    clock = Clock()
    breaker = opened(clock)
    clock.now += 30.0
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one trial at a time

    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()

    clock.now += 30.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_a_released_trial_lets_the_next_attempt_try_and_changes_nothing_else():
    # Given a half-open breaker whose trial ended without a verdict on the provider (a message
    # it refused, a cancelled send)
    clock = Clock()
    breaker = opened(clock)
    clock.now += 30.0
    assert breaker.allow()
    breaker.release()

    # Then it is still half-open, and the next attempt is the new trial
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()


def test_released_attempts_neither_open_nor_reset_the_count():
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=30.0, clock=Clock())
    breaker.record_failure()
    breaker.record_failure()
    for _ in range(10):
        breaker.release()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"


def test_the_retry_budget_allows_retries_in_proportion_to_sends_plus_a_trickle():
    from smart_dispatch.dispatch.resilience import RetryBudget

    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_s=0.5, clock=clock)  # banks at most 5
    assert [budget.withdraw() for _ in range(6)] == [True] * 5 + [False]
    # five first attempts earn one retry
    for _ in range(5):
        budget.deposit()
    assert budget.withdraw() and not budget.withdraw()
    # and the trickle: one every 2 s, banked up to 5 however long it is quiet
    clock.now += 2.0
    assert budget.withdraw() and not budget.withdraw()
    clock.now += 3600.0
    assert [budget.withdraw() for _ in range(6)] == [True] * 5 + [False]
