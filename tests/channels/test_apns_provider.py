"""APNs over HTTP/2 with a token-based (.p8) key, against a local HTTP/2 fake of APNs that
verifies the ES256 provider token with the key's public half, on a fake clock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from smart_dispatch.channels.base import Content, ProviderError
from smart_dispatch.channels.http_common import HttpOptions
from smart_dispatch.channels.push_apns import ApnsConfig, ApnsKey, ApnsProvider

from tests.channels.helpers import delivery
from tests.channels.push_fakes import ApnsFake, FakeClock

CONTENT = Content(title="Sign-in", text="Your code is 123", fields={"code": "123", "collapse_id": "otp"})
Make = Callable[..., ApnsProvider]


@pytest.fixture
async def apns() -> AsyncIterator[ApnsFake]:
    fake = await ApnsFake(FakeClock()).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def make(apns: ApnsFake) -> AsyncIterator[Make]:
    providers: list[ApnsProvider] = []

    def build(**overrides: Any) -> ApnsProvider:
        key = ApnsKey.from_pem(apns.p8, team_id=apns.team_id, key_id=apns.key_id)
        values: dict[str, Any] = {"topic": "com.example.app", "api_base": apns.url, **overrides}
        timeout_s, clock = values.pop("timeout_s", 2.0), values.pop("clock", apns.clock)
        provider = ApnsProvider(ApnsConfig(key, **values), options=HttpOptions(timeout_s), clock=clock)
        providers.append(provider)
        return provider

    yield build
    for provider in providers:
        await provider.close()


async def test_an_alert_goes_over_http2_with_apns_headers_and_a_valid_token(
    apns: ApnsFake, make: Make
) -> None:
    provider = make()

    result = await provider.send(delivery("push", address="a1b2c3", content=CONTENT))

    [seen] = apns.requests
    assert seen.valid and seen.path == "/3/device/a1b2c3"
    expected_id = str(uuid.uuid5(uuid.UUID("5b8c3f0e-4a57-4b8e-9a43-6f2d3c1e7a10"), "d-1:0"))
    assert result.provider_message_id == expected_id == seen.headers["apns-id"]
    headers = seen.headers
    assert (headers["apns-topic"], headers["apns-push-type"], headers["apns-priority"]) == (
        "com.example.app",
        "alert",
        "10",
    )
    assert headers["apns-expiration"] == str(int(apns.clock() + 86400))
    assert headers["apns-collapse-id"] == "otp"
    assert seen.json() == {
        "aps": {"alert": {"title": "Sign-in", "body": "Your code is 123"}},
        "code": "123",
        "sd_message_id": "m-1",
        "sd_dispatch_id": "d-1",
    }


async def test_a_background_push_has_content_available_and_priority_5(apns: ApnsFake, make: Make) -> None:
    provider = make(push_type="background", expiration_s=0)

    await provider.send(delivery("push", address="a1", content=Content(fields={"sync": True})))

    [seen] = apns.requests
    assert seen.json()["aps"] == {"content-available": 1}
    assert (seen.headers["apns-priority"], seen.headers["apns-expiration"]) == ("5", "0")
    assert "apns-collapse-id" not in seen.headers


async def test_no_request_ever_carries_an_expired_token_and_updates_stay_20_minutes_apart(
    apns: ApnsFake, make: Make
) -> None:
    provider = make()
    start = apns.clock()
    while apns.clock() < start + 5 * 3600:  # five hours in 7-minute steps
        await provider.send(delivery("push", address="a1"))
        apns.clock.advance(7 * 60)

    assert apns.requests and all(seen.valid for seen in apns.requests)
    gaps = [b - a for a, b in zip(apns.token_updates, apns.token_updates[1:], strict=False)]
    assert gaps and all(20 * 60 <= gap < 60 * 60 for gap in gaps)
    assert provider.token_mints == len(apns.token_updates)


async def test_an_expired_provider_token_is_replaced_once_and_the_send_repeated(
    apns: ApnsFake, make: Make
) -> None:
    provider = make(clock=FakeClock(apns.clock() - 3601))  # our clock lags APNs' by an hour

    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery("push", address="a1"))

    # refused, replaced once (still an hour old by APNs' clock), refused again: retryable
    assert [s.valid for s in apns.requests] == [False, False]
    assert (caught.value.code, caught.value.retryable) == ("ExpiredProviderToken", True)
    assert provider.token_mints == 2
    with pytest.raises(ProviderError) as again:  # the replacement is too young to be replaced
        await provider.send(delivery("push", address="a1"))
    assert (again.value.code, again.value.retryable, again.value.retry_after_s) == (
        "token_refused",
        True,
        1200,
    )
    assert provider.token_mints == 2


async def test_an_invalid_provider_token_is_replaced_once_then_permanent(apns: ApnsFake, make: Make) -> None:
    provider = make()
    await provider.send(delivery("push", address="a1"))
    apns.refuse_tokens.add(apns.requests[0].token)  # e.g. the key was revoked and re-made
    apns.clock.advance(30 * 60)

    await provider.send(delivery("push", address="a1"))  # replaced once, then accepted

    assert [s.valid for s in apns.requests] == [True, False, True]
    assert provider.token_mints == 2
    apns.refuse_tokens.add(apns.requests[-1].token)  # refused again, 0 minutes after its update
    with pytest.raises(ProviderError) as caught:
        await provider.send(delivery("push", address="a1"))
    assert (caught.value.code, caught.value.retryable) == ("InvalidProviderToken", False)
    assert provider.token_mints == 2  # no update sooner than 20 minutes


@pytest.mark.parametrize(
    ("status", "reason", "retryable", "invalid_address", "retry_after"),
    [
        (400, "BadDeviceToken", False, True, None),
        (400, "DeviceTokenNotForTopic", False, True, None),
        (410, "Unregistered", False, True, None),
        (400, "BadTopic", False, False, None),
        (413, "PayloadTooLarge", False, False, None),
        (429, "TooManyRequests", True, False, 20.0),
        (500, "InternalServerError", True, False, 20.0),
        (503, "ServiceUnavailable", True, False, 20.0),
        (503, "Shutdown", True, False, 20.0),
    ],
)
async def test_apns_reasons_map_to_retry_or_not(
    apns: ApnsFake,
    make: Make,
    status: int,
    reason: str,
    retryable: bool,
    invalid_address: bool,
    retry_after: float | None,
) -> None:
    apns.devices["d1"] = (status, reason, {"retry-after": "20"})

    with pytest.raises(ProviderError) as caught:
        await make().send(delivery("push", address="d1"))

    error = caught.value
    assert (error.code, error.retryable, error.invalid_address) == (reason, retryable, invalid_address)
    assert error.retry_after_s == retry_after


async def test_a_silent_server_is_a_retryable_timeout(apns: ApnsFake, make: Make) -> None:
    apns.hold.add("slow")

    with pytest.raises(ProviderError) as caught:
        await make(timeout_s=0.3).send(delivery("push", address="slow"))

    assert (caught.value.code, caught.value.retryable) == ("timeout", True)


def test_a_key_that_is_not_p256_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.channels.push_fakes import pem

    with pytest.raises(ValueError, match="P-256"):
        ApnsKey.from_pem(pem(ec.generate_private_key(ec.SECP384R1())), team_id="T", key_id="K")
    with pytest.raises(ValueError, match="not an EC private key"):
        ApnsKey.from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", team_id="T", key_id="K"
        )
