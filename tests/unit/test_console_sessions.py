"""Console sessions (console/auth.py): what a cookie is worth, and for how long."""

from __future__ import annotations

from smart_dispatch.console.auth import MAX_LOGIN_FORMS, OPEN_CALLER, Sessions, csrf_ok
from smart_dispatch.security import Caller, TokenTable, token_digest

OPERATOR = Caller("operator", frozenset({"admin"}))
TOKENS = TokenTable({token_digest("s3cret-token"): OPERATOR})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_login_swaps_the_login_form_session_for_a_new_one_with_the_callers_scopes():
    sessions = Sessions(TOKENS)
    form = sessions.start()
    assert form.caller is None and not form.allows("read")

    assert sessions.login(form, "wrong") is None
    signed_in = sessions.login(form, " s3cret-token\n")

    assert signed_in is not None and signed_in.caller == OPERATOR
    assert signed_in.allows("read") and signed_in.allows("admin") and not signed_in.allows("decide")
    assert signed_in.session_id != form.session_id and signed_in.csrf != form.csrf
    assert sessions.from_cookie(sessions.cookie_value(form)) is None
    assert sessions.from_cookie(sessions.cookie_value(signed_in)) == signed_in


def test_a_cookie_is_worth_nothing_altered_from_another_process_or_expired():
    clock = Clock()
    sessions = Sessions(TOKENS, ttl_s=60, clock=clock)
    session = sessions.login(None, "s3cret-token")
    assert session is not None
    cookie = sessions.cookie_value(session)

    assert sessions.from_cookie(cookie.replace(".", "x.", 1)) is None
    assert sessions.from_cookie(session.session_id) is None  # no MAC
    assert sessions.from_cookie("é." + cookie.partition(".")[2]) is None
    assert Sessions(TOKENS, clock=clock).from_cookie(cookie) is None  # another key
    clock.now += 61
    assert sessions.from_cookie(cookie) is None


def test_a_flood_of_login_forms_pushes_out_no_signed_in_session():
    sessions = Sessions(TOKENS)
    signed_in = sessions.login(None, "s3cret-token")
    assert signed_in is not None
    first_form = sessions.start()

    for _ in range(MAX_LOGIN_FORMS + 10):
        sessions.start()

    assert sessions.from_cookie(sessions.cookie_value(signed_in)) == signed_in
    assert sessions.from_cookie(sessions.cookie_value(first_form)) is None


def test_without_tokens_every_session_may_do_everything_and_forms_need_their_csrf_token():
    sessions = Sessions(None)
    session = sessions.start()

    assert sessions.open and session.caller == OPEN_CALLER and session.allows("admin")
    assert sessions.login(session, "anything") is None  # nothing to log in to
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, "") and not csrf_ok(session, session.csrf[:-1]) and not csrf_ok(None, "x")
