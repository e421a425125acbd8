"""The channel-provider contract: one attempt to hand one message to one provider.

A provider speaks a real protocol (SMTP, an HTTP API, the in-app inbox in the store) and
classifies every failure as retryable (timeouts, connection errors, 5xx, 429 with Retry-After)
or permanent (invalid address, other 4xx, provider error codes meaning "will never work").
The sender pool owns retries, backoff, circuit breaking and fallback; a provider makes exactly
one attempt per `send` call.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from smart_dispatch.errors import ProviderError as ProviderError  # defined there, with the tree


@dataclass(frozen=True, slots=True)
class Content:
    """A message rendered for one channel. Which fields are set depends on the channel:
    sms/in_app: `text`; email: `subject`, `text`, `html`; push: `title`, `text` (body);
    wechat: `template_id` + `fields` (template data); webhook: `fields` (JSON payload) + `text`.
    sms by a provider's registered template (templates.py, `sms.yaml`): `template_id` (the
    template code), `sign_name` (the signature), `fields` (the template parameters), `text`.

    `variants`: the content as a provider of that name is to send it (a template variant that
    targets a provider: its own template code, signature, parameters); `for_provider` picks."""

    text: str = ""
    subject: str = ""
    html: str = ""
    title: str = ""
    template_id: str = ""
    url: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    sign_name: str = ""
    variants: Mapping[str, Content] = field(default_factory=dict)

    def for_provider(self, name: str) -> Content:
        """The variant for the provider called `name`; this content itself when none targets it."""
        return self.variants.get(name, self)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt. `idempotency_key` is the same for every attempt of one plan step, so a
    provider that deduplicates never delivers a retried step twice. `unsubscribe_url`: a link
    that opts the person out of this message's category on this channel with one click (RFC
    8058), for providers whose protocol carries one (e-mail: List-Unsubscribe); "" for none."""

    dispatch_id: str
    message_id: str
    user_id: str
    channel: str
    address: str
    content: Content
    idempotency_key: str
    attempt: int = 1
    unsubscribe_url: str = ""

    def for_provider(self, name: str) -> Delivery:
        """This delivery with the content variant of the provider called `name` (itself when
        none targets that provider): what a provider made of others hands each of them."""
        content = self.content.for_provider(name)
        return self if content is self.content else replace(self, content=content)


@dataclass(frozen=True, slots=True)
class SendResult:
    provider: str
    provider_message_id: str = ""


class Provider(abc.ABC):
    """Sends on one channel. `name` identifies the provider in attempts, metrics and breakers."""

    channel: str
    name: str

    def error(
        self,
        problem: str,
        *,
        retryable: bool,
        code: str = "",
        retry_after_s: float | None = None,
        invalid_address: bool = False,
    ) -> ProviderError:
        """A `ProviderError` naming this provider and channel (to be raised by the caller)."""
        return ProviderError(
            problem,
            provider=self.name,
            channel=self.channel,
            retryable=retryable,
            retry_after_s=retry_after_s,
            code=code,
            invalid_address=invalid_address,
        )

    @abc.abstractmethod
    async def send(self, delivery: Delivery) -> SendResult:
        """Make one attempt. Raises `ProviderError` (never anything else) on failure."""

    async def close(self) -> None:
        """Release connections. Default: nothing to release."""
        return None
