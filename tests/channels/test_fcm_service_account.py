"""FCM HTTP v1 with a service account: tokens minted with the JWT-bearer grant against a fake of
Google's token endpoint (which verifies the assertion's signature with the account's public
key), refreshed before expiry on a fake clock, one exchange for concurrent sends; FCM's errors
against a fake of FCM v1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from smart_dispatch.channels.base import Content, ProviderError
from smart_dispatch.channels.http_common import HttpOptions
from smart_dispatch.channels.push_fcm import FcmConfig, FcmProvider, ServiceAccount

from tests.channels.helpers import delivery
from tests.channels.push_fakes import FakeClock, GoogleFake, fcm_error

CONTENT = Content(title="Sign-in", text="Your code is 123", fields={"code": "123"})


@pytest.fixture
async def google() -> AsyncIterator[GoogleFake]:
    fake = await GoogleFake(FakeClock()).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def fcm(google: GoogleFake) -> AsyncIterator[FcmProvider]:
    account = ServiceAccount.from_json(google.service_account_json())
    config = FcmConfig(project=account.project_id, api_base=google.url, service_account=account)
    provider = FcmProvider(config, options=HttpOptions(timeout_s=2), clock=google.clock)
    yield provider
    await provider.close()


async def test_a_send_mints_a_token_with_a_signed_assertion_and_uses_it(
    google: GoogleFake, fcm: FcmProvider
) -> None:
    result = await fcm.send(delivery("push", address="device-1", content=CONTENT))

    assert result.provider_message_id == "projects/demo-project/messages/0:1"
    [assertion] = google.assertions  # the fake verified its RS256 signature with the public key
    assert assertion["header"] == {"alg": "RS256", "typ": "JWT", "kid": "key-1"}
    claims = assertion["claims"]
    assert claims["iat"] == int(google.clock()) and claims["exp"] - claims["iat"] == 3600
    [send] = google.sends
    assert send.valid and send.token == "ya29.fake-1"
    assert send.json()["message"]["token"] == "device-1"


async def test_no_send_ever_carries_an_expired_token_across_refreshes(
    google: GoogleFake, fcm: FcmProvider
) -> None:
    # Six hours in 97-second steps, three concurrent sends per step: every token must be valid
    # at the instant the fake receives it, and one exchange serves each refresh.
    clock = google.clock
    start = clock()
    while clock() < start + 6 * 3600:
        await asyncio.gather(*(fcm.send(delivery("push", address=f"device-{i}")) for i in range(3)))
        clock.advance(97)

    assert google.sends and all(seen.valid for seen in google.sends)
    assert all(seen.at < google.issued[seen.token] - 290 for seen in google.sends)  # the margin held
    # a token lives 3599 s and is replaced 300 s early: a new one every 3299 s or so
    assert fcm.token_fetches == len(google.issued) and 6 <= fcm.token_fetches <= 8


async def test_the_token_is_kept_until_the_margin_and_replaced_right_at_it(
    google: GoogleFake, fcm: FcmProvider
) -> None:
    await fcm.send(delivery("push", address="d"))
    expires = google.issued["ya29.fake-1"]

    google.clock.now = expires - 301  # just before the margin: the old token, still valid
    await fcm.send(delivery("push", address="d"))
    google.clock.now = expires - 300  # at the margin: a new one
    await fcm.send(delivery("push", address="d"))

    assert [seen.token for seen in google.sends] == ["ya29.fake-1", "ya29.fake-1", "ya29.fake-2"]
    assert all(seen.valid for seen in google.sends)


async def test_concurrent_sends_share_one_token_exchange(google: GoogleFake, fcm: FcmProvider) -> None:
    google.token_delay_s = 0.2  # every sender arrives while the exchange is in flight

    await asyncio.gather(*(fcm.send(delivery("push", address=f"d{i}")) for i in range(20)))

    assert fcm.token_fetches == 1 and len(google.issued) == 1
    assert {seen.token for seen in google.sends} == {"ya29.fake-1"}


async def test_a_failed_exchange_fails_every_waiting_sender_and_the_next_send_tries_again(
    google: GoogleFake, fcm: FcmProvider
) -> None:
    google.token_delay_s = 0.1
    google.token_script = [(503, {"error": "backend_error"})]

    results = await asyncio.gather(
        *(fcm.send(delivery("push", address=f"d{i}")) for i in range(5)), return_exceptions=True
    )

    assert all(
        isinstance(r, ProviderError) and r.retryable and r.code == "oauth_backend_error" for r in results
    )
    assert fcm.token_fetches == 1 and not google.sends
    await fcm.send(delivery("push", address="d"))
    assert fcm.token_fetches == 2


async def test_a_refused_grant_is_permanent_and_names_no_secret(google: GoogleFake, fcm: FcmProvider) -> None:
    google.token_script = [(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})]

    with pytest.raises(ProviderError) as caught:
        await fcm.send(delivery("push", address="d"))

    assert (caught.value.retryable, caught.value.code) == (False, "oauth_invalid_grant")
    assert "BEGIN" not in str(caught.value) and "eyJ" not in str(caught.value)


async def test_a_revoked_token_is_replaced_once_within_the_attempt(
    google: GoogleFake, fcm: FcmProvider
) -> None:
    await fcm.send(delivery("push", address="d"))
    google.issued["ya29.fake-1"] = google.clock() - 1  # revoked early: FCM answers 401

    await fcm.send(delivery("push", address="d"))

    assert [(s.token, s.valid) for s in google.sends] == [
        ("ya29.fake-1", True),
        ("ya29.fake-1", False),
        ("ya29.fake-2", True),
    ]


async def test_unregistered_token_is_permanent_and_marks_the_address_invalid(
    google: GoogleFake, fcm: FcmProvider
) -> None:
    google.devices["gone"] = (404, fcm_error(404, "NOT_FOUND", "UNREGISTERED"), {})

    with pytest.raises(ProviderError) as caught:
        await fcm.send(delivery("push", address="gone"))

    error = caught.value
    assert (error.retryable, error.code, error.invalid_address) == (False, "UNREGISTERED", True)


@pytest.mark.parametrize(
    ("status", "name", "code", "retryable", "retry_after"),
    [
        (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", True, 30.0),
        (503, "UNAVAILABLE", "UNAVAILABLE", True, 30.0),
        (500, "INTERNAL", "INTERNAL", True, 30.0),
        (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", False, None),
        (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", False, None),
        (401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", False, None),
    ],
)
async def test_fcm_errors_map_to_retry_or_not(
    google: GoogleFake,
    fcm: FcmProvider,
    status: int,
    name: str,
    code: str,
    retryable: bool,
    retry_after: float | None,
) -> None:
    google.devices["d"] = (status, fcm_error(status, name, code), {"Retry-After": "30"})

    with pytest.raises(ProviderError) as caught:
        await fcm.send(delivery("push", address="d"))

    error = caught.value
    assert (error.code, error.retryable, error.retry_after_s, error.invalid_address) == (
        code,
        retryable,
        retry_after,
        False,
    )
    assert fcm.token_fetches == 1  # THIRD_PARTY_AUTH_ERROR is a 401 too, not about our token


async def test_the_bearer_token_mode_still_works_and_is_never_refreshed(google: GoogleFake) -> None:
    google.issued["static-token"] = google.clock() + 10
    config = FcmConfig(project="demo-project", token="static-token", api_base=google.url)
    provider = FcmProvider(config, clock=google.clock)
    try:
        await provider.send(delivery("push", address="d"))
        google.clock.advance(60)
        with pytest.raises(ProviderError) as caught:
            await provider.send(delivery("push", address="d"))
    finally:
        await provider.close()

    assert (caught.value.code, caught.value.retryable) == ("UNAUTHENTICATED", False)
    assert provider.token_fetches == 0 and not google.assertions


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not JSON"),
        ('{"type": "authorized_user"}', "not 'service_account'"),
        ('{"type": "service_account", "client_email": "a@b", "token_uri": "https://t/"}', "'private_key'"),
        ('{"client_email": "a@b", "token_uri": "https://t/", "private_key": "-----BEGIN"}', "not an RSA"),
    ],
)
def test_a_bad_service_account_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ServiceAccount.from_json(text)
