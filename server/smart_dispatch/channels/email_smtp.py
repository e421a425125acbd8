"""E-mail over SMTP (`aiosmtplib`), one connection per attempt.

The message is ``multipart/alternative`` (text, then HTML) when the content has HTML, plain text
otherwise, with From, To, Subject, Date and these headers:

    Message-ID                  derived from the idempotency key: every retry of one step
                                carries the same id, so receiving systems can drop repeats
    X-Idempotency-Key           the delivery's idempotency key
    X-SmartDispatch-Message-Id  the caller's message id (to match bounces to `ReportEvent`)
    List-Unsubscribe            <the delivery's one-click unsubscribe URL>, and
    List-Unsubscribe-Post       List-Unsubscribe=One-Click (RFC 8058): only when the delivery
                                has a URL (links configured, the category not required) that
                                fits on one header line (998 characters). Mail clients POST to
                                the URL; sign the two headers with DKIM at your MTA, as RFC
                                8058 asks

Transport security: `tls` is implicit TLS from the first byte (SMTPS, usually port 465);
`starttls` upgrades a plain connection and fails when the server does not offer it; neither
means plain text (a local relay or test server). Credentials are sent only when `username` is set.

Classification (the error `code` is the SMTP reply code, or one of the words below):

    5xx reply (recipient refused, mailbox unknown, message rejected, auth failed)  permanent
    4xx reply (mailbox busy, greylisting, 421 service not available)              retryable
    connection refused / dropped, timeouts (``connection``, ``timeout``)           retryable
    invalid recipient address (``invalid_address``), unusable content
    (``invalid_content``), STARTTLS/AUTH required but not offered
    (``not_supported``), TLS handshake or certificate failure (``tls``)           permanent
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, parseaddr

import aiosmtplib

from smart_dispatch.channels.base import Delivery, Provider, ProviderError, SendResult
from smart_dispatch.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where and how to submit mail. `sender` is the From header ("Name <addr>" or "addr");
    `timeout_s` bounds one whole attempt (connect, TLS, auth, transfer) in seconds."""

    host: str
    port: int
    sender: str
    starttls: bool = False
    tls: bool = False
    username: str = ""
    password: str = ""
    timeout_s: float = 10.0
    validate_certs: bool = True

    def __post_init__(self) -> None:
        if self.starttls and self.tls:
            raise ConfigurationError("smtp: choose starttls or tls (implicit TLS), not both")
        if mailbox(self.sender) is None:
            raise ConfigurationError(f"smtp: from address {self.sender!r} is not an e-mail address")


def mailbox(address: str) -> str | None:
    """The bare ``local@domain`` of `address` ("Name <a@b>" or "a@b"); None when it is not one."""
    if "\r" in address or "\n" in address:
        return None
    _name, addr = parseaddr(address)
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in addr):
        return None
    return addr


def build_message(sender: str, delivery: Delivery) -> EmailMessage:
    """The e-mail for `delivery` (see the module docstring). Raises `ValueError` when a header
    would be invalid (e.g. a subject spanning lines). Pure."""
    content = delivery.content
    domain = (mailbox(sender) or "smart-dispatch.invalid").rpartition("@")[2]
    digest = hashlib.sha256(delivery.idempotency_key.encode()).hexdigest()[:32]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = delivery.address
    message["Subject"] = content.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = f"<{digest}@{domain}>"
    message["X-Idempotency-Key"] = delivery.idempotency_key
    message["X-SmartDispatch-Message-Id"] = delivery.message_id
    link = f"<{delivery.unsubscribe_url}>"
    if delivery.unsubscribe_url and len(_LIST_UNSUBSCRIBE) + 2 + len(link) <= _MAX_LINE and link.isascii():
        message.set_raw(_LIST_UNSUBSCRIBE, _OneLineHeader(_LIST_UNSUBSCRIBE, link))
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    if content.html and not content.text:
        message.set_content(content.html, subtype="html")
    else:
        message.set_content(content.text)
        if content.html:
            message.add_alternative(content.html, subtype="html")
    return message


_LIST_UNSUBSCRIBE = "List-Unsubscribe"
_MAX_LINE = 998  # RFC 5322: characters of a line, at most


class _OneLineHeader(str):
    """A header value written on one line as given. The e-mail generator folds long values of
    other headers at 78 characters, and a URL (which has no spaces to fold at) into RFC 2047
    encoded words, which no mail client reads as a List-Unsubscribe link."""

    name: str

    def __new__(cls, name: str, value: str) -> _OneLineHeader:
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: {self}{policy.linesep}"


def classify(exc: BaseException) -> tuple[bool, str]:
    """(retryable, code) for an exception raised while talking SMTP. Pure."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [refused.code for refused in exc.recipients]
        return all(400 <= code < 500 for code in codes), ",".join(map(str, codes))
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return not 500 <= exc.code < 600, str(exc.code)
    if isinstance(exc, TimeoutError):  # includes aiosmtplib's connect / read timeouts
        return True, "timeout"
    if isinstance(exc, ssl.SSLError):  # certificate or protocol mismatch: retrying cannot help
        return False, "tls"
    if isinstance(exc, OSError):  # refused, reset, dropped (aiosmtplib's connect/disconnect errors)
        return True, "connection"
    # What remains are capability mismatches found before any reply code: STARTTLS or AUTH
    # required by our settings but not offered by the server.
    return False, "not_supported"


class SmtpProvider(Provider):
    """E-mail over SMTP, see the module docstring."""

    def __init__(self, config: SmtpConfig, *, channel: str = "email", name: str = "smtp") -> None:
        self.channel = channel
        self.name = name
        self.config = config
        self._envelope_sender = mailbox(config.sender) or config.sender

    def _error(self, problem: str, *, retryable: bool, code: str) -> ProviderError:
        return ProviderError(
            problem, provider=self.name, channel=self.channel, retryable=retryable, code=code
        )

    async def send(self, delivery: Delivery) -> SendResult:
        recipient = mailbox(delivery.address)
        if recipient is None:
            raise self._error("address is not an e-mail address", retryable=False, code="invalid_address")
        try:
            message = build_message(self.config.sender, delivery)
        except ValueError as exc:
            raise self._error(
                f"cannot build the message: {exc}", retryable=False, code="invalid_content"
            ) from exc
        config = self.config
        try:
            async with asyncio.timeout(config.timeout_s):
                await aiosmtplib.send(
                    message,
                    sender=self._envelope_sender,
                    recipients=[recipient],
                    hostname=config.host,
                    port=config.port,
                    username=config.username or None,
                    password=config.password if config.username else None,
                    use_tls=config.tls,
                    start_tls=config.starttls,
                    validate_certs=config.validate_certs,
                    timeout=config.timeout_s,
                )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            retryable, code = classify(exc)
            raise self._error(f"{type(exc).__name__}: {exc}", retryable=retryable, code=code) from exc
        return SendResult(self.name, str(message["Message-ID"]))
