"""The SMTP provider against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from smart_dispatch.channels.base import Content, ProviderError
from smart_dispatch.channels.email_smtp import SmtpConfig, SmtpProvider

from tests.channels.helpers import delivery
from tests.support.redis_servers import free_port
from tests.support.sinks import Mailbox

CONTENT = Content(
    subject="Your code is 123", text="Your code is 123\n", html="<p>Your code is <b>123</b></p>"
)
SENDER = "Smart Dispatch <noreply@example.com>"


StartServer = Callable[..., Awaitable[int]]


@pytest.fixture
async def smtp_server() -> AsyncIterator[StartServer]:
    """`await smtp_server(mailbox, ssl=None, **smtp_options)` → port of a server on 127.0.0.1."""
    servers: list[asyncio.Server] = []

    async def start(mailbox: Mailbox, ssl: ssl.SSLContext | None = None, **options: Any) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(mailbox, hostname="mx.test", **options), "127.0.0.1", 0, ssl=ssl
        )
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="session")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for localhost."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found on PATH")
    directory: Path = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def provider(port: int, **options: Any) -> SmtpProvider:
    return SmtpProvider(SmtpConfig(host="127.0.0.1", port=port, sender=SENDER, timeout_s=3, **options))


async def test_message_has_subject_text_and_html_parts_and_idempotency_headers(
    smtp_server: StartServer,
) -> None:
    mailbox = Mailbox()
    port = await smtp_server(mailbox)

    result = await provider(port, starttls=False).send(
        delivery("email", address="Ann <ann@example.org>", content=CONTENT)
    )

    [(envelope, session)] = mailbox.received
    assert envelope.mail_from == "noreply@example.com"
    assert envelope.rcpt_tos == ["ann@example.org"]
    assert session.ssl is None  # STARTTLS off: plain text all the way
    message = mailbox.message()
    assert message["Subject"] == "Your code is 123"
    assert message["From"] == SENDER
    assert message["To"] == "Ann <ann@example.org>"
    assert message["X-Idempotency-Key"] == "d-1:0"
    assert message["X-SmartDispatch-Message-Id"] == "m-1"
    assert message["Message-ID"] == result.provider_message_id
    assert result.provider_message_id.endswith("@example.com>")
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.get_payload()
    assert (text.get_content_type(), text.get_content().strip()) == ("text/plain", "Your code is 123")
    assert html.get_content_type() == "text/html"
    assert "<b>123</b>" in html.get_content()


async def test_retries_of_one_step_carry_the_same_message_id(smtp_server: StartServer) -> None:
    mailbox = Mailbox()
    smtp = provider(await smtp_server(mailbox))

    first = await smtp.send(delivery("email", address="ann@example.org", content=CONTENT))
    again = await smtp.send(delivery("email", address="ann@example.org", content=CONTENT, attempt=2))
    other = await smtp.send(
        delivery("email", address="ann@example.org", content=CONTENT, idempotency_key="d-2:0")
    )

    assert first.provider_message_id == again.provider_message_id != other.provider_message_id


async def test_text_only_content_is_a_plain_message(smtp_server: StartServer) -> None:
    mailbox = Mailbox()
    port = await smtp_server(mailbox)

    await provider(port).send(
        delivery("email", address="ann@example.org", content=Content(subject="Hi", text="Hello"))
    )

    assert mailbox.message().get_content_type() == "text/plain"


async def test_refused_recipient_is_permanent(smtp_server: StartServer) -> None:
    mailbox = Mailbox()
    mailbox.refuse["nobody@example.org"] = "550 5.1.1 No such user"
    port = await smtp_server(mailbox)

    with pytest.raises(ProviderError) as caught:
        await provider(port).send(delivery("email", address="nobody@example.org", content=CONTENT))

    assert (caught.value.retryable, caught.value.code, caught.value.channel) == (False, "550", "email")
    assert mailbox.received == []


async def test_temporary_refusal_is_retryable(smtp_server: StartServer) -> None:
    mailbox = Mailbox()
    mailbox.refuse["busy@example.org"] = "421 4.7.0 Try again later"
    port = await smtp_server(mailbox)

    with pytest.raises(ProviderError) as caught:
        await provider(port).send(delivery("email", address="busy@example.org", content=CONTENT))

    assert (caught.value.retryable, caught.value.code) == (True, "421")


async def test_server_down_is_retryable() -> None:
    with pytest.raises(ProviderError) as caught:
        await provider(free_port()).send(delivery("email", address="ann@example.org", content=CONTENT))

    assert (caught.value.retryable, caught.value.code) == (True, "connection")


async def test_silent_server_times_out_retryably() -> None:
    release = asyncio.Event()

    async def never_greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(never_greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    smtp = SmtpProvider(SmtpConfig(host="127.0.0.1", port=port, sender=SENDER, timeout_s=0.3))
    try:
        with pytest.raises(ProviderError) as caught:
            await smtp.send(delivery("email", address="ann@example.org", content=CONTENT))
    finally:
        release.set()
        server.close()
        await server.wait_closed()

    assert (caught.value.retryable, caught.value.code) == (True, "timeout")


@pytest.mark.parametrize("address", ["", "ann", "ann@", "a b@example.org", "ann@example.org\r\nBcc: x@y.z"])
async def test_invalid_address_is_permanent_without_connecting(address: str) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider(free_port()).send(delivery("email", address=address, content=CONTENT))

    assert (caught.value.retryable, caught.value.code) == (False, "invalid_address")


async def test_multiline_subject_is_permanent_invalid_content(smtp_server: StartServer) -> None:
    port = await smtp_server(Mailbox())
    content = Content(subject="Hi\nBcc: evil@example.org", text="x")

    with pytest.raises(ProviderError) as caught:
        await provider(port).send(delivery("email", address="ann@example.org", content=content))

    assert (caught.value.retryable, caught.value.code) == (False, "invalid_content")


async def test_login_uses_the_configured_credentials(smtp_server: StartServer) -> None:
    mailbox = Mailbox()
    port = await smtp_server(mailbox, authenticator=mailbox.authenticate, auth_require_tls=False)

    await provider(port, username="app", password="pw-from-env").send(
        delivery("email", address="ann@example.org", content=CONTENT)
    )

    assert mailbox.logins == [(b"app", b"pw-from-env")]
    assert len(mailbox.received) == 1


async def test_wrong_password_is_permanent(smtp_server: StartServer) -> None:
    mailbox = Mailbox()
    port = await smtp_server(mailbox, authenticator=mailbox.authenticate, auth_require_tls=False)

    with pytest.raises(ProviderError) as caught:
        await provider(port, username="app", password="wrong").send(
            delivery("email", address="ann@example.org", content=CONTENT)
        )

    assert (caught.value.retryable, caught.value.code) == (False, "535")


async def test_starttls_upgrades_the_connection(smtp_server: StartServer, server_tls: ssl.SSLContext) -> None:
    mailbox = Mailbox()
    port = await smtp_server(mailbox, tls_context=server_tls, require_starttls=True)

    await provider(port, starttls=True, validate_certs=False).send(
        delivery("email", address="ann@example.org", content=CONTENT)
    )

    [(_envelope, session)] = mailbox.received
    assert session.ssl is not None


async def test_implicit_tls(smtp_server: StartServer, server_tls: ssl.SSLContext) -> None:
    mailbox = Mailbox()
    port = await smtp_server(mailbox, ssl=server_tls)

    await provider(port, tls=True, validate_certs=False).send(
        delivery("email", address="ann@example.org", content=CONTENT)
    )

    assert len(mailbox.received) == 1


async def test_starttls_required_but_not_offered_is_permanent(smtp_server: StartServer) -> None:
    port = await smtp_server(Mailbox())

    with pytest.raises(ProviderError) as caught:
        await provider(port, starttls=True).send(
            delivery("email", address="ann@example.org", content=CONTENT)
        )

    assert (caught.value.retryable, caught.value.code) == (False, "not_supported")


async def test_untrusted_certificate_is_permanent(
    smtp_server: StartServer, server_tls: ssl.SSLContext
) -> None:
    port = await smtp_server(Mailbox(), tls_context=server_tls)

    with pytest.raises(ProviderError) as caught:
        await provider(port, starttls=True).send(
            delivery("email", address="ann@example.org", content=CONTENT)
        )

    assert (caught.value.retryable, caught.value.code) == (False, "tls")
