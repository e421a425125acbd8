"""Unsubscribe tokens and links (preferences/unsubscribe_token.py): signed, expiring, verified
in constant time, refused with a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from smart_dispatch.errors import ConfigurationError, UnsubscribeTokenError
from smart_dispatch.preferences.unsubscribe_token import UnsubscribeLinks, UnsubscribeTokens

NOW = datetime(2026, 6, 1, 20, 0, tzinfo=UTC)
SECRET = "a-secret-of-at-least-16-bytes"


class Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def test_a_signed_token_verifies_to_what_it_grants():
    tokens = UnsubscribeTokens(SECRET, ttl_s=3600, clock=Clock(NOW.timestamp()))

    granted = tokens.verify(tokens.sign("ädä 7", "marketing", "email"))

    assert (granted.user_id, granted.category, granted.channel) == ("ädä 7", "marketing", "email")
    assert granted.expires_at == NOW + timedelta(hours=1)


def test_an_expired_token_says_when_it_expired():
    clock = Clock(NOW.timestamp())
    tokens = UnsubscribeTokens(SECRET, ttl_s=60, clock=clock)
    token = tokens.sign("ada", "marketing", "email")
    clock.now_s += 60

    with pytest.raises(UnsubscribeTokenError) as raised:
        tokens.verify(token)
    assert raised.value.reason == "expired"
    assert raised.value.field == "token"
    assert str(raised.value) == f"token: expired at {(NOW + timedelta(minutes=1)).isoformat()}"


def test_an_altered_or_foreign_token_is_refused():
    tokens = UnsubscribeTokens(SECRET)
    payload, signature = tokens.sign("ada", "marketing", "email").split(".")
    other = UnsubscribeTokens("another-secret-of-16-bytes").sign("ada", "marketing", "email")
    forged = UnsubscribeTokens(SECRET).sign("bob", "marketing", "email").split(".")[0] + "." + signature

    for token in (other, forged, payload + "." + signature[:-2] + "AA"):
        with pytest.raises(UnsubscribeTokenError) as raised:
            tokens.verify(token)
        assert raised.value.reason == "bad_signature", token


@pytest.mark.parametrize("token", ["", "no-dot", ".sig", "payload.", "a.b.c", "!!!.***", "x" * 5000, "é.é"])
def test_a_malformed_token_is_refused(token: str):
    with pytest.raises(UnsubscribeTokenError) as raised:
        UnsubscribeTokens(SECRET).verify(token)
    assert raised.value.reason in ("malformed", "bad_signature")


def test_a_short_secret_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="at least 16"):
        UnsubscribeTokens("short")


def test_links_point_at_the_public_url_and_skip_required_categories():
    tokens = UnsubscribeTokens(SECRET)
    links = UnsubscribeLinks(tokens, "https://notify.example.com/", lambda category: category == "otp")

    url = links.url_for("ada", "marketing", "email")

    assert url.startswith("https://notify.example.com/unsubscribe?token=")
    assert tokens.verify(url.partition("token=")[2]).user_id == "ada"
    assert links.url_for("ada", "otp", "email") == ""
    with pytest.raises(ConfigurationError):
        UnsubscribeLinks(tokens, "notify.example.com", lambda category: False)
