"""Chats and everything else through Apprise: one adapter for WeCom, DingTalk and Feishu bots,
Slack, Telegram, Discord, Matrix, Teams, ntfy, a JSON webhook and 100+ more services.

    ops_chat: {type: apprise, url_env: OPS_CHAT_URLS}

The environment variable holds one or more Apprise URLs (separated by spaces or commas), e.g.
``wecombot://<key>``, ``dingtalk://<token>/``, ``feishu://<token>/``, ``slack://<T>/<B>/<C>``,
``tgram://<bot token>/<chat id>``, ``json://host:port/path``; they carry secrets, so they are
never in the providers file, in an error or a log line of ours. Every message of the channel
goes to every URL; the recipient's address on the channel only has to be non-empty (it makes
the channel reachable for the decision, like any address) and is otherwise not used.

A message's body is the rendered content's `text`, its title `title` (else `subject`);
`notify_type` (info, success, warning, failure) sets the services' colour or icon and
`body_format` (text, markdown, html) how the body is read.

*Not blocking the event loop:* Apprise's plugins are synchronous (`requests`); its
`async_notify` hands each one to Apprise's own thread pool and awaits it, so a slow chat
service holds a worker thread, never the loop. The call is bounded by `timeout_s` (Apprise's
call deadline, and an asyncio bound over it).

Outcome. Apprise reports success or failure per service, not the service's HTTP status nor its
Retry-After, so failures cannot be told apart:

    every service accepted it         sent (`provider_message_id` empty: chats return none)
    a service failed (or only some:   retryable, code ``apprise_failed`` / ``apprise_partial``;
    the retry sends to all again)     a 429 of the service is one of these, without a hint
    the deadline passed               retryable, code ``timeout``
    no URL matched                    permanent, code ``apprise_no_target``

With several URLs a partial failure repeats the message on the services that took it: give
each chat its own provider (a failover list of apprise providers) where that matters.
Receipts: chat services send none.
"""

from __future__ import annotations

import asyncio
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smart_dispatch.channels.base import Delivery, Provider, SendResult

if TYPE_CHECKING:  # imported when a provider is built: Apprise and its plugins take a while
    import apprise

NOTIFY_TYPES = ("info", "success", "warning", "failure")
BODY_FORMATS = ("text", "markdown", "html")


@dataclass(frozen=True, slots=True)
class AppriseConfig:
    """`urls`: Apprise URLs separated by spaces or commas (secrets: from the environment)."""

    urls: str
    notify_type: str = "info"
    body_format: str = "text"
    timeout_s: float = 10.0


def build_apprise(urls: str) -> apprise.Apprise:
    """An Apprise object holding `urls`. Raises `ValueError` saying how many URLs Apprise did not
    take (never quoting them: they carry tokens). The first call loads Apprise's plugins (a
    second or two); the deprecation warnings some of them raise on import are not ours to act
    on, and are silenced while they load."""
    import apprise
    from apprise.utils.parse import parse_urls

    candidates: list[str] = parse_urls(urls)  # type: ignore[no-untyped-call]
    if not candidates:
        raise ValueError("holds no URL")
    notifier = apprise.Apprise()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        refused = sum(1 for url in candidates if not notifier.add(url))
    if refused:
        raise ValueError(
            f"Apprise does not take {refused} of its {len(candidates)} URL(s) (an unknown scheme, "
            "or a URL that service cannot use)"
        )
    return notifier


class AppriseProvider(Provider):
    """Sends through Apprise, see the module docstring."""

    def __init__(self, config: AppriseConfig, *, channel: str, name: str = "apprise") -> None:
        if config.notify_type not in NOTIFY_TYPES:
            raise ValueError(f"notify_type must be one of {', '.join(NOTIFY_TYPES)}")
        if config.body_format not in BODY_FORMATS:
            raise ValueError(f"body_format must be one of {', '.join(BODY_FORMATS)}")
        self.channel = channel
        self.name = name
        self.config = config
        self._apprise = build_apprise(config.urls)

    async def send(self, delivery: Delivery) -> SendResult:
        content = delivery.content
        body = content.text or content.title or content.subject
        if not body:
            raise self.error("nothing to send: the content has no text", retryable=False, code="empty_body")
        timeout_s = self.config.timeout_s
        try:
            async with asyncio.timeout(timeout_s + 1.0):  # Apprise's deadline first, ours to be sure
                result = await self._apprise.async_notify(
                    body=body,
                    title=content.title or content.subject,
                    notify_type=self.config.notify_type,
                    body_format=self.config.body_format,
                    timeout=timeout_s,
                )
        except TimeoutError as exc:
            raise self.error(f"no answer within {timeout_s} s", retryable=True, code="timeout") from exc
        from apprise import AppriseResultStatus

        status = result.status
        if status == AppriseResultStatus.SUCCESS:
            return SendResult(self.name, "")
        if status == AppriseResultStatus.TIMEOUT:
            raise self.error(f"no answer within {timeout_s} s", retryable=True, code="timeout")
        if status == AppriseResultStatus.NOMATCH:
            raise self.error("no Apprise URL to notify", retryable=False, code="apprise_no_target")
        if status == AppriseResultStatus.PARTIAL:
            raise self.error(
                f"{result.failed_count} of {len(result.results)} services failed",
                retryable=True,
                code="apprise_partial",
            )
        raise self.error(
            f"{result.failed_count or 'every'} service(s) failed", retryable=True, code="apprise_failed"
        )
