"""One-click unsubscribe (RFC 8058): e-mail delivered to a real SMTP server carries
List-Unsubscribe and List-Unsubscribe-Post for categories that are not required; its signed,
expiring token records the opt-out through `Operations.unsubscribe` (what the admin port's
`POST /unsubscribe?token=…` calls), and a bad token is refused with a clear reason."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
from decide_builders import codes, decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.app import App
from smart_dispatch.errors import (
    ConfigurationError,
    ConflictError,
    RequiredCategoryError,
    UnsubscribeTokenError,
)
from smart_dispatch.preferences.unsubscribe_token import UnsubscribeTokens

from tests.support.sinks import Mailbox, start_smtp
from tests.support.waiting import eventually

RULES = """
categories:
  - {name: otp, required: true}
  - marketing
rules:
  - name: otp
    when: {category: otp}
    then: {prefer: [email], bypass_caps: true, bypass_quiet_hours: true}
  - name: marketing
    when: {category: marketing}
    then: {prefer: [email, in_app]}
"""
SECRET = "unsubscribe-secret-for-the-tests"
PUBLIC_URL = "https://notify.example.com/base/"
ADDRESSES = {"email": "ada@example.com", "in_app": "inbox-ada"}


@dataclass
class World:
    app: App
    stub: pb_grpc.SmartDispatchServiceStub
    mailbox: Mailbox

    async def mail_for(self, category: str, message_id: str) -> EmailMessage:
        """Dispatch a message by e-mail and return the mail the SMTP server received."""
        request = decide_request(category, user="ada", message_id=message_id, addresses=ADDRESSES)
        await self.stub.Dispatch(pb.DispatchRequest(message=request.message, recipient=request.recipient))

        async def arrived() -> EmailMessage | None:
            for index in range(len(self.mailbox.received)):
                mail = self.mailbox.message(index)
                if mail["X-SmartDispatch-Message-Id"] == message_id:
                    return mail
            return None

        return await eventually(arrived, what=f"the e-mail of {message_id}")


@pytest.fixture
def start_world(
    make_app: Callable[..., App], tmp_path: Path
) -> Callable[..., AbstractAsyncContextManager[World]]:
    """`async with start_world(**settings) as world`: the sidecar, its SMTP server's mailbox."""

    @asynccontextmanager
    async def start(**settings: object) -> AsyncIterator[World]:
        rules = tmp_path / "rules"
        rules.mkdir(exist_ok=True)
        (rules / "rules.yaml").write_text(RULES)
        mailbox = Mailbox()
        smtp, port = await start_smtp(mailbox)
        providers = tmp_path / "providers.yaml"
        providers.write_text(
            f'email: {{type: smtp, host: 127.0.0.1, port: {port}, from: "news@example.com", timeout_s: 2}}\n'
            "in_app: {type: inbox}\n"
        )
        try:
            app = make_app(rules_dir=rules, providers_file=providers, senders=2, **settings)
            async with app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                yield World(app, pb_grpc.SmartDispatchServiceStub(channel), mailbox)
        finally:
            smtp.close()
            await smtp.wait_closed()

    return start


def token_of(mail: EmailMessage) -> str:
    link = str(mail["List-Unsubscribe"])
    assert link.startswith("<") and link.endswith(">"), link
    url = urlsplit(link[1:-1])
    assert (url.scheme, url.netloc, url.path) == ("https", "notify.example.com", "/base/unsubscribe")
    [token] = parse_qs(url.query)["token"]
    return token


async def test_marketing_mail_carries_a_one_click_link_that_records_the_opt_out(start_world):
    async with start_world(unsubscribe_secret=SECRET, public_url=PUBLIC_URL) as world:
        # Given a marketing e-mail as the person's mail server received it
        mail = await world.mail_for("marketing", "promo-1")
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

        # When their mail client follows the link (the admin port calls Operations.unsubscribe)
        preferences = await world.app.operations.unsubscribe(token_of(mail))

        # Then the opt-out is stored, and the next marketing message does not go by e-mail
        assert [(c.category, c.channel, c.allowed) for c in preferences.consents] == [
            ("marketing", "email", False)
        ]
        got = await world.stub.GetPreferences(pb.GetPreferencesRequest(user_id="ada"))
        assert got.preferences == preferences
        decided = await world.stub.Decide(decide_request("marketing", user="ada", addresses=ADDRESSES))
        assert [s.channel for s in decided.steps] == ["in_app"]
        only_mail = decide_request("marketing", user="ada", addresses={"email": "ada@example.com"})
        suppressed = await world.stub.Decide(only_mail)
        assert (suppressed.verdict, codes(suppressed)) == (pb.VERDICT_SUPPRESS, ["opted_out"])
        # Using the link again changes nothing more
        assert await world.app.operations.unsubscribe(token_of(mail)) == preferences


async def test_required_categories_carry_no_link(start_world):
    async with start_world(unsubscribe_secret=SECRET, public_url=PUBLIC_URL) as world:
        mail = await world.mail_for("otp", "otp-1")

    assert mail["List-Unsubscribe"] is None
    assert mail["List-Unsubscribe-Post"] is None


async def test_without_a_secret_there_is_no_link_and_no_unsubscribing(start_world):
    async with start_world() as world:
        mail = await world.mail_for("marketing", "promo-2")
        with pytest.raises(ConflictError, match="no SD_UNSUBSCRIBE_SECRET"):
            await world.app.operations.unsubscribe("anything")

    assert mail["List-Unsubscribe"] is None


async def test_a_bad_token_is_refused_with_a_clear_reason_and_records_nothing(start_world):
    async with start_world(unsubscribe_secret=SECRET, public_url=PUBLIC_URL) as world:
        valid = UnsubscribeTokens(SECRET).sign("ada", "marketing", "email")
        signature = valid.split(".")[1]
        expired = UnsubscribeTokens(SECRET, ttl_s=60, clock=lambda: time.time() - 3600).sign(
            "ada", "marketing", "email"
        )
        cases = {
            "not-a-token": "malformed",
            UnsubscribeTokens("some-other-secret-16b").sign("ada", "marketing", "email"): "bad_signature",
            UnsubscribeTokens(SECRET).sign("eve", "marketing", "email").split(".")[0] + "." + signature: (
                "bad_signature"
            ),
            expired: "expired",
        }
        for token, reason in cases.items():
            with pytest.raises(UnsubscribeTokenError) as raised:
                await world.app.operations.unsubscribe(token)
            assert raised.value.reason == reason
            assert str(raised.value).startswith("token: ")
        assert "expired at" in str(raised.value)

        # A valid token of a category the rules made required is refused too
        with pytest.raises(RequiredCategoryError) as refused:
            await world.app.operations.unsubscribe(UnsubscribeTokens(SECRET).sign("ada", "otp", "email"))
        assert refused.value.category == "otp"

        for user in ("ada", "eve"):
            got = await world.stub.GetPreferences(pb.GetPreferencesRequest(user_id=user))
            assert got.preferences == pb.Preferences()


async def test_a_secret_without_a_public_url_is_a_configuration_error(make_app, tmp_path: Path):
    (tmp_path / "rules.yaml").write_text(RULES)
    app = make_app(rules_dir=tmp_path, unsubscribe_secret=SECRET)

    with pytest.raises(ConfigurationError, match="SD_UNSUBSCRIBE_SECRET needs SD_PUBLIC_URL"):
        await app.start()
    await app.stop()
