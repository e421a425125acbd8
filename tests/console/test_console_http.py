"""The console's sessions, scopes, CSRF and escaping, seen over plain HTTP (no browser): what a
forged cookie, a form from another site or a hostile id gets."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.console.conftest import OPERATOR_TOKEN, VIEWER_TOKEN, Sidecar, running_sidecar


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


async def logged_in(client: httpx.AsyncClient, sidecar: Sidecar, token: str) -> httpx.Response:
    form = await client.get(f"{sidecar.base}/console/login")
    return await client.post(
        f"{sidecar.base}/console/login",
        data={"csrf": csrf_of(form), "token": token, "next": "/console/dead-letters"},
    )


async def test_a_page_without_a_session_sends_the_browser_to_the_login_form(sidecar: Sidecar):
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{sidecar.base}/console/user?id=u-1")
    login = urlsplit(answer.headers["location"])
    assert answer.status_code == 303 and login.path == "/console/login"
    assert parse_qs(login.query) == {"next": ["/console/user?id=u-1"]}


async def test_login_keeps_no_token_in_the_cookie_and_starts_a_fresh_strict_http_only_session(
    sidecar: Sidecar,
):
    async with httpx.AsyncClient() as client:
        form = await client.get(f"{sidecar.base}/console/login")
        before = client.cookies["sd_console"]
        signed_in = await client.post(
            f"{sidecar.base}/console/login",
            data={"csrf": csrf_of(form), "token": OPERATOR_TOKEN, "next": "/console/dead-letters"},
        )
        after = client.cookies["sd_console"]
        cookie = signed_in.headers["set-cookie"]

        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/console/dead-letters"
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
        assert OPERATOR_TOKEN not in cookie and after != before
        assert (await client.get(f"{sidecar.base}/console/dead-letters")).status_code == 200
        # the session seen before login is over
        client.cookies.set("sd_console", before)
        assert (await client.get(f"{sidecar.base}/console/dead-letters")).status_code == 303


async def test_an_unknown_token_or_a_login_without_the_form_token_is_refused(sidecar: Sidecar):
    async with httpx.AsyncClient() as client:
        form = await client.get(f"{sidecar.base}/console/login")
        wrong = await client.post(
            f"{sidecar.base}/console/login", data={"csrf": csrf_of(form), "token": "guess"}
        )
        forged = await client.post(f"{sidecar.base}/console/login", data={"token": OPERATOR_TOKEN})
    assert wrong.status_code == 401 and "Unknown token." in wrong.text
    assert forged.status_code == 403 and "The login form expired" in forged.text


async def test_an_altered_cookie_is_no_session(sidecar: Sidecar):
    async with httpx.AsyncClient() as client:
        await logged_in(client, sidecar, OPERATOR_TOKEN)
        session_id, _, mac = client.cookies["sd_console"].partition(".")
        client.cookies.set("sd_console", f"{session_id}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}")
        answer = await client.get(f"{sidecar.base}/console/")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login")


async def test_a_form_without_its_csrf_token_is_refused_even_for_an_admin(sidecar: Sidecar):
    async with httpx.AsyncClient() as client:
        await logged_in(client, sidecar, OPERATOR_TOKEN)
        answer = await client.post(f"{sidecar.base}/console/dead-letters/redrive", data={"all": "1"})
    assert answer.status_code == 403
    assert "This form has expired (or came from another site)" in answer.text


async def test_a_viewer_with_a_valid_form_is_still_refused_a_redrive(sidecar: Sidecar):
    async with httpx.AsyncClient() as client:
        page = await logged_in(client, sidecar, VIEWER_TOKEN)
        page = await client.get(f"{sidecar.base}/console/dead-letters")
        answer = await client.post(
            f"{sidecar.base}/console/dead-letters/redrive", data={"all": "1", "csrf": csrf_of(page)}
        )
    assert answer.status_code == 403 and "needs the <b>admin</b> scope" in answer.text


async def test_after_logout_the_cookie_opens_nothing(sidecar: Sidecar):
    async with httpx.AsyncClient() as client:
        await logged_in(client, sidecar, OPERATOR_TOKEN)
        cookie = client.cookies["sd_console"]
        page = await client.get(f"{sidecar.base}/console/")
        out = await client.post(f"{sidecar.base}/console/logout", data={"csrf": csrf_of(page)})
        client.cookies.set("sd_console", cookie)
        again = await client.get(f"{sidecar.base}/console/")
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    assert again.status_code == 303


async def test_login_never_sends_the_browser_to_another_site(sidecar: Sidecar):
    async with httpx.AsyncClient() as client:
        form = await client.get(f"{sidecar.base}/console/login")
        answer = await client.post(
            f"{sidecar.base}/console/login",
            data={"csrf": csrf_of(form), "token": OPERATOR_TOKEN, "next": "//evil.example/console/"},
        )
    assert answer.headers["location"] == "/console/"


async def test_pages_escape_what_they_show_and_forbid_scripts(tmp_path, monkeypatch: pytest.MonkeyPatch):
    async with (
        running_sidecar(tmp_path, monkeypatch, secured=False) as sidecar,
        httpx.AsyncClient() as client,
    ):
        answer = await client.get(f"{sidecar.base}/console/user", params={"id": "<script>alert(1)</script>"})
    assert answer.status_code == 200
    assert "<script>" not in answer.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in answer.text
    assert "script-src" not in answer.headers["content-security-policy"]  # default-src 'none'
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "this console is open to anyone" in answer.text


async def test_metrics_stay_open_on_the_admin_port_next_to_the_console(sidecar: Sidecar):
    async with httpx.AsyncClient() as client:
        metrics = await client.get(f"{sidecar.base}/metrics")
        root = await client.get(f"{sidecar.base}/")
    assert metrics.status_code == 200 and "smartdispatch_" in metrics.text
    assert root.status_code == 404


async def test_rfc_8058_one_click_unsubscribe_needs_no_session_and_answers_200(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    from smart_dispatch.preferences.unsubscribe_token import UnsubscribeTokens

    secret = "unsubscribe-secret-of-this-test"
    overrides = {"unsubscribe_secret": secret, "public_url": "http://127.0.0.1"}
    async with running_sidecar(tmp_path, monkeypatch, **overrides) as sidecar, httpx.AsyncClient() as c:
        token = UnsubscribeTokens(secret).sign("u-bob", "promo", "sms")
        # what a mail client sends (RFC 8058 section 3.2): a POST with this body, no cookie
        answer = await c.post(
            f"{sidecar.base}/unsubscribe",
            params={"token": token},
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        forged = await c.post(f"{sidecar.base}/unsubscribe", params={"token": "x.y"})
        assert sidecar.app.operations is not None
        stored = (await sidecar.app.operations.preferences("u-bob")).preferences
    assert answer.status_code == 200 and "You are unsubscribed" in answer.text
    assert [(c.category, c.channel, c.allowed) for c in stored.consents] == [("promo", "sms", False)]
    assert forged.status_code == 400 and "set-cookie" not in forged.headers
