"""The provider contract (the cases of tests/channels/test_provider_contract.py) over the push and
chat providers, each against a local fake of its real API (tests/channels/push_fakes.py; for
Apprise, a loopback server playing its json:// target):

- success: a `SendResult` naming the provider; the fake received one valid request;
- a permanent error: not retryable; for push the device token is dead, so `invalid_address`.
  Apprise reports a service's failure without its status, so a target's 4xx is retryable; its
  permanent errors are the ones found before sending (here: nothing to send);
- a retryable error (an outage): retryable, the address not marked;
- a rate limit: retryable with the service's Retry-After (FCM's QUOTA_EXCEEDED, APNs'
  TooManyRequests); Apprise does not pass the target's Retry-After on: retryable without one;
- a timeout: retryable, code ``timeout``;
- no receipt case: neither FCM, APNs nor the chat services send delivery receipts (an app
  reports `opened` / `clicked` itself with ReportEvent, using the `sd_message_id` the push
  carries).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from smart_dispatch.channels.base import Content, Provider, ProviderError
from smart_dispatch.channels.chat_apprise import AppriseConfig, AppriseProvider
from smart_dispatch.channels.http_common import HttpOptions
from smart_dispatch.channels.push_apns import ApnsConfig, ApnsKey, ApnsProvider
from smart_dispatch.channels.push_fcm import FcmConfig, FcmProvider, ServiceAccount

from tests.channels.helpers import HttpSink, Received, delivery
from tests.channels.push_fakes import ApnsFake, FakeClock, GoogleFake, fcm_error

CONTENT = Content(title="Heads up", text="db-1 is down", fields={"host": "db-1"})


@dataclass
class Harness:
    """One provider against its fake: `arrange(scenario)` makes the fake answer the next send so;
    `requests()` counts what the fake received, `valid()` whether every request was acceptable."""

    name: str
    provider: Provider
    channel: str
    address: str
    arrange: Callable[[str], None]
    requests: Callable[[], int]
    valid: Callable[[], bool]
    permanent_code: str
    permanent_marks_address: bool
    rate_limit_s: float | None
    stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def send(self, content: Content = CONTENT) -> Any:
        return await self.provider.send(delivery(self.channel, address=self.address, content=content))


async def fcm_harness(timeout_s: float) -> Harness:
    google = await GoogleFake(FakeClock()).start()
    account = ServiceAccount.from_json(google.service_account_json())
    config = FcmConfig(project=account.project_id, api_base=google.url, service_account=account)
    provider = FcmProvider(config, options=HttpOptions(timeout_s=timeout_s), clock=google.clock)
    answers = {
        "permanent": (404, fcm_error(404, "NOT_FOUND", "UNREGISTERED"), {}),
        "retryable": (503, fcm_error(503, "UNAVAILABLE", "UNAVAILABLE"), {}),
        "rate_limited": (429, fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), {"Retry-After": "7"}),
    }

    def arrange(scenario: str) -> None:
        if scenario == "slow":
            google.send_delay.clear()
        elif scenario in answers:
            google.devices["device-1"] = answers[scenario]

    return Harness(
        "fcm",
        provider,
        "push",
        "device-1",
        arrange,
        lambda: len(google.sends),
        lambda: all(seen.valid for seen in google.sends),
        "UNREGISTERED",
        True,
        7.0,
        [provider.close, google.stop],
    )


async def apns_harness(timeout_s: float) -> Harness:
    apns = await ApnsFake(FakeClock()).start()
    key = ApnsKey.from_pem(apns.p8, team_id=apns.team_id, key_id=apns.key_id)
    config = ApnsConfig(key, topic="com.example.app", api_base=apns.url)
    provider = ApnsProvider(config, options=HttpOptions(timeout_s=timeout_s), clock=apns.clock)
    answers = {
        "permanent": (410, "Unregistered", {}),
        "retryable": (503, "ServiceUnavailable", {}),
        "rate_limited": (429, "TooManyRequests", {"retry-after": "7"}),
    }

    def arrange(scenario: str) -> None:
        if scenario == "slow":
            apns.hold.add("a1b2c3")
        elif scenario in answers:
            apns.devices["a1b2c3"] = answers[scenario]

    return Harness(
        "apns",
        provider,
        "push",
        "a1b2c3",
        arrange,
        lambda: len(apns.requests),
        lambda: all(seen.valid for seen in apns.requests),
        "Unregistered",
        True,
        7.0,
        [provider.close, apns.stop],
    )


async def apprise_harness(timeout_s: float) -> Harness:
    release = asyncio.Event()
    statuses: list[int] = []

    async def target(request: Received) -> web.StreamResponse:
        status = statuses.pop(0) if statuses else 200
        if status == 0:  # slow: no answer until the test ends
            await release.wait()
            status = 200
        return web.json_response({}, status=status, headers={"Retry-After": "7"})

    sink = await HttpSink(target).start()
    url = sink.url.replace("http://", "json://") + "/ops"
    provider = AppriseProvider(AppriseConfig(url, timeout_s=timeout_s), channel="ops_chat", name="apprise")
    answers = {"retryable": 503, "rate_limited": 429, "slow": 0}

    def arrange(scenario: str) -> None:
        if scenario in answers:
            statuses.append(answers[scenario])

    async def stop() -> None:
        release.set()
        await sink.stop()

    return Harness(
        "apprise",
        provider,
        "ops_chat",
        "ops",
        arrange,
        lambda: len(sink.requests),
        lambda: all(r.json().get("message") for r in sink.requests),
        "empty_body",
        False,
        None,
        [provider.close, stop],
    )


BUILDERS: dict[str, Callable[[float], Awaitable[Harness]]] = {
    "fcm": fcm_harness,
    "apns": apns_harness,
    "apprise": apprise_harness,
}


@pytest.fixture(params=sorted(BUILDERS))
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    made: list[Harness] = []

    async def build(timeout_s: float = 2.0) -> Harness:
        harness = await BUILDERS[request.param](timeout_s)
        made.append(harness)
        return harness

    yield build
    for harness in made:
        for stop in harness.stop:
            await stop()


async def test_success(make) -> None:
    harness = await make()

    result = await harness.send()

    assert result.provider == harness.name
    assert harness.requests() == 1 and harness.valid()


async def test_a_permanent_error(make) -> None:
    harness = await make()
    harness.arrange("permanent")

    with pytest.raises(ProviderError) as caught:
        if harness.name == "apprise":  # found before sending: the only permanent errors it has
            await harness.send(Content())
        else:
            await harness.send()

    error = caught.value
    assert (error.retryable, error.code, error.provider) == (False, harness.permanent_code, harness.name)
    assert error.invalid_address == harness.permanent_marks_address


async def test_a_retryable_error(make) -> None:
    harness = await make()
    harness.arrange("retryable")

    with pytest.raises(ProviderError) as caught:
        await harness.send()

    assert caught.value.retryable and not caught.value.invalid_address


async def test_a_rate_limit_with_retry_after(make) -> None:
    harness = await make()
    harness.arrange("rate_limited")

    with pytest.raises(ProviderError) as caught:
        await harness.send()

    assert caught.value.retryable
    assert caught.value.retry_after_s == harness.rate_limit_s


async def test_a_timeout(make) -> None:
    harness = await make(timeout_s=0.3)
    harness.arrange("slow")

    with pytest.raises(ProviderError) as caught:
        await harness.send()

    assert (caught.value.retryable, caught.value.code) == (True, "timeout")
