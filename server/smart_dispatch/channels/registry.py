"""Providers from configuration: one provider per channel, chosen by `type`, secrets from env.

A providers file maps channels to provider settings; every key below is optional unless marked
*required*. Secrets are never in the file: a `*_env` key names the environment variable holding
the secret. Every provider also takes `name` (default: its type), naming it in attempts, metrics
and circuit breakers, `rate` (e.g. `100/s`, `600/min`: sends at most that often, shared by every
sidecar on Redis; a send over it waits for its turn, never fails) with `burst` (default: one
second's worth), and `retry` (its channel's retry policy, every key optional, defaults from
the sidecar's settings: `{max_attempts: 3, base_s: 0.5, max_s: 60, multiplier: 2, timeout_s: 10}`:
attempts per plan step, the backoff's base, ceiling and growth, and the bound of one call).

    email:   {type: smtp, host*, port*, from*, starttls: false, tls: false, username: "",
              password_env (required when username is set), timeout_s: 10, validate_certs: true}
    sms:     {type: http_sms, url*, token_env, timeout_s: 5, max_connections: 100}
    sms:     {type: aliyun_sms, access_key_id*, access_key_secret_env*, sign_name: "",
              endpoint: https://dysmsapi.aliyuncs.com, receipt_token_env, timeout_s: 5,
              max_connections: 100}
    sms:     {type: tencentcloud_sms, secret_id*, secret_key_env*, sdk_app_id*, sign_name: "",
              region: ap-guangzhou, endpoint: https://sms.tencentcloudapi.com,
              receipt_token_env, timeout_s: 5, max_connections: 100}
    sms:     {type: twilio, account_sid*, auth_token_env*, from | messaging_service_sid (one*),
              api_base: https://api.twilio.com, timeout_s: 5, max_connections: 100}
    wechat:  {type: wechat, appid*, secret_env*, api_base: https://api.weixin.qq.com,
              token_margin_s: 300, timeout_s: 5, max_connections: 100}
    push:    {type: fcm, service_account_file | service_account_env | token_env (one of them*),
              project (default: the service account's project_id), token_margin_s: 300,
              api_base: https://fcm.googleapis.com, timeout_s: 5, max_connections: 100}
    push:    {type: apns, team_id*, key_id*, key_file | key_env (the .p8 key; one of them*),
              topic*, api_base: https://api.push.apple.com (sandbox: https://api.sandbox.push.apple.com),
              push_type: alert, priority (10; 5 for background), expiration_s: 86400,
              token_refresh_s: 3000, timeout_s: 5, max_connections: 100}
    <any>:   {type: apprise, url_env*, notify_type: info, body_format: text, timeout_s: 10}
    webhook: {type: webhook, secret_env*, timeout_s: 5, max_connections: 100,
              deny_private: false, deny_networks: [], allow_networks: []}
    in_app:  {type: inbox}
    <any>:   {type: stub, delay_s: 0}             records deliveries in memory, sends nothing

Webhook destinations (the URL comes with each message; `smart_dispatch.channels.destinations`):
link-local (169.254.0.0/16, fe80::/10), unspecified (0.0.0.0/8, ::/128) and fd00:ec2::254 are
always denied; `deny_private: true` also denies loopback, RFC 1918, 100.64.0.0/10 and fc00::/7;
`deny_networks` adds CIDR networks; `allow_networks` (CIDR) are exceptions that win over every
deny entry. IPv4-mapped addresses are judged as the IPv4 address too. Quote IPv6 networks in
YAML flow lists (``["fd00::/8"]``). A denied address fails the send permanently with code
``forbidden_destination``.

A channel may list several providers instead of one: they are tried in order for each message,
the next one taking over when one fails retryably or its circuit is open, before the plan falls
back to another channel; with `weight: N` on every one of them, the order is drawn by weight
per message (traffic shared). Each needs its own `name`; the first carries the channel's
`retry`. See `smart_dispatch.channels.failover`.

    sms:
      - {name: gateway_a, type: http_sms, url: "https://a.example/send", retry: {max_attempts: 3}}
      - {name: gateway_b, type: http_sms, url: "https://b.example/send"}

Channels are the built-in ones (`smart_dispatch.domain.KNOWN_CHANNELS`) or custom ones: any
name (a-z, 0-9, _; e.g. `ops_chat`) served by a type that serves any channel (apprise, webhook,
stub; `register(..., any_channel=True)`). `custom_channels` lists them, and the runtime declares
them before the rules load (`domain.set_custom_channels`): rules, requests, events and
preferences may then name them. A channel absent from the file has no provider. Unknown types,
channels or keys, a missing required key, a wrong value type and an unset environment variable
raise `ProviderConfigError` (a `ConfigurationError`) naming the file, channel and key. New
types are added with `@register("name")`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from smart_dispatch.channels import chat_apprise, push_apns, push_fcm, wechat
from smart_dispatch.channels.aliyun_sms import DEFAULT_ENDPOINT as ALIYUN_ENDPOINT
from smart_dispatch.channels.aliyun_sms import AliyunSmsConfig, AliyunSmsProvider
from smart_dispatch.channels.base import Provider
from smart_dispatch.channels.chat_apprise import AppriseConfig, AppriseProvider
from smart_dispatch.channels.destinations import DestinationPolicy, IPNetwork, parse_network
from smart_dispatch.channels.email_smtp import SmtpConfig, SmtpProvider, mailbox
from smart_dispatch.channels.failover import FailoverProvider
from smart_dispatch.channels.http_common import HttpOptions
from smart_dispatch.channels.in_app import InboxProvider
from smart_dispatch.channels.push_apns import ApnsConfig, ApnsKey, ApnsProvider
from smart_dispatch.channels.push_fcm import FcmConfig, FcmProvider, ServiceAccount
from smart_dispatch.channels.sms_http import SmsGatewayConfig, SmsGatewayProvider
from smart_dispatch.channels.stub import StubProvider
from smart_dispatch.channels.tencent_sms import DEFAULT_ENDPOINT as TENCENT_ENDPOINT
from smart_dispatch.channels.tencent_sms import DEFAULT_REGION as TENCENT_REGION
from smart_dispatch.channels.tencent_sms import TencentSmsConfig, TencentSmsProvider
from smart_dispatch.channels.twilio_sms import DEFAULT_API_BASE as TWILIO_API_BASE
from smart_dispatch.channels.twilio_sms import TwilioConfig, TwilioProvider
from smart_dispatch.channels.webhook import WebhookConfig, WebhookProvider
from smart_dispatch.channels.wechat import WeChatConfig, WeChatProvider
from smart_dispatch.dispatch.resilience import RetryPolicy
from smart_dispatch.domain import CUSTOM_CHANNEL_NAME, KNOWN_CHANNELS
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.inbox.base import InboxStore
from smart_dispatch.ratelimit.base import MemoryRateLimiter, RateLimiter
from smart_dispatch.ratelimit.provider import RateLimitedProvider

log = logging.getLogger(__name__)

T = TypeVar("T")
ProviderFactory = Callable[["Section"], Provider]
_FACTORIES: dict[str, ProviderFactory] = {}
_ANY_CHANNEL: set[str] = set()  # types that may serve a custom channel
_COMMON_KEYS = frozenset({"type", "name", "retry", "rate", "burst"})
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER_S = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_RETRY_KEYS = frozenset({"max_attempts", "base_s", "max_s", "multiplier", "timeout_s"})


class ProviderConfigError(ConfigurationError):
    """A provider setting is wrong. `key` is "" when the problem is the whole entry or file."""

    def __init__(self, file: str, channel: str, key: str, problem: str) -> None:
        where = ".".join(part for part in (channel, key) if part)
        super().__init__(f"{file}: {where + ': ' if where else ''}{problem}")
        self.file = file
        self.channel = channel
        self.key = key
        self.problem = problem


def register(type_name: str, *, any_channel: bool = False) -> Callable[[ProviderFactory], ProviderFactory]:
    """Register a factory building a provider of `type_name` from its `Section`; `any_channel`:
    the type may also serve a custom channel (module docstring)."""

    def add(factory: ProviderFactory) -> ProviderFactory:
        _FACTORIES[type_name] = factory
        if any_channel:
            _ANY_CHANNEL.add(type_name)
        return factory

    return add


def provider_types() -> tuple[str, ...]:
    return tuple(sorted(_FACTORIES))


@dataclass
class Section:
    """One channel's settings, read key by key with type checks; remembers what was read so
    that unknown (misspelt) keys are reported."""

    file: str
    channel: str
    values: Mapping[str, Any]
    env: Mapping[str, str]
    inbox: InboxStore
    read: set[str] = field(default_factory=lambda: set(_COMMON_KEYS))

    def error(self, key: str, problem: str) -> ProviderConfigError:
        return ProviderConfigError(self.file, self.channel, key, problem)

    def _get(self, key: str, kind: type[T], default: T | None) -> T:
        self.read.add(key)
        if key not in self.values or self.values[key] is None:
            if default is None:
                raise self.error(key, "required key is missing")
            return default
        value = self.values[key]
        # bool is an int in Python: a `port: true` must not pass as 1.
        if kind in (int, float) and isinstance(value, int | float) and not isinstance(value, bool):
            return kind(value)  # type: ignore[call-arg]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(key, f"must be {kind.__name__}, got {value!r}")
        return value

    def text(self, key: str, default: str | None = None) -> str:
        return self._get(key, str, default)

    def flag(self, key: str, default: bool) -> bool:
        return self._get(key, bool, default)

    def number(self, key: str, default: float, *, allow_zero: bool = False) -> float:
        value = self._get(key, float, default)
        if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
            raise self.error(
                key, f"must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}"
            )
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        value = self._get(key, float, None if default is None else float(default))
        if value != int(value) or value <= 0:
            raise self.error(key, f"must be a positive whole number, got {value!r}")
        return int(value)

    def url(self, key: str, default: str | None = None) -> str:
        """An http(s) URL with a host."""
        value = self.text(key, default)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(key, f"must be an http(s) URL, got {value!r}")
        return value

    def networks(self, key: str) -> tuple[IPNetwork, ...]:
        """A list of IP networks in CIDR notation (default: empty)."""
        values = self._get(key, list, [])
        networks: list[IPNetwork] = []
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise self.error(key, f"item {index + 1}: must be a CIDR network as text, got {value!r}")
            try:
                networks.append(parse_network(value))
            except ValueError as exc:
                raise self.error(key, f"item {index + 1}: {exc}") from None
        return tuple(networks)

    def secret(self, key: str, *, required: bool = True) -> str:
        """The value of the environment variable named by `key` ("" when optional and unset)."""
        variable = self.text(key, None if required else "")
        if not variable:
            return ""
        if variable not in self.env:
            raise self.error(key, f"environment variable {variable} is not set")
        return self.env[variable]

    def present(self, *keys: str) -> list[str]:
        """Which of `keys` are set, in their order (all of them count as read)."""
        self.read.update(keys)
        return [key for key in keys if self.values.get(key) is not None]

    def one_of(self, *keys: str, what: str) -> str:
        """The one of `keys` that is set; an error naming them when none or several are."""
        given = self.present(*keys)
        if len(given) != 1:
            raise self.error(
                given[1] if given else keys[0], f"give exactly one of {', '.join(keys)} ({what})"
            )
        return given[0]

    def file_text(self, key: str) -> str:
        """The UTF-8 text of the file whose path is `key`."""
        path = self.text(key)
        try:
            return Path(path).read_text("utf-8")
        except (OSError, UnicodeError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise self.error(key, f"cannot read {path}: {problem}") from None

    def http_options(self) -> HttpOptions:
        return HttpOptions(self.number("timeout_s", 5.0), self.integer("max_connections", 100))

    def name(self, type_name: str) -> str:
        return self.text("name", type_name)


@register("smtp")
def _smtp(section: Section) -> Provider:
    username = section.text("username", "")
    sender = section.text("from")
    if mailbox(sender) is None:
        raise section.error("from", f"{sender!r} is not an e-mail address")
    starttls, tls = section.flag("starttls", False), section.flag("tls", False)
    password = ""
    if username:
        password = section.secret("password_env")
    else:
        section.read.add("password_env")  # allowed (and unread) without a username
    if starttls and tls:
        raise section.error("tls", "choose starttls or tls (implicit TLS), not both")
    config = SmtpConfig(
        host=section.text("host"),
        port=section.integer("port"),
        sender=sender,
        starttls=starttls,
        tls=tls,
        username=username,
        password=password,
        timeout_s=section.number("timeout_s", 10.0),
        validate_certs=section.flag("validate_certs", True),
    )
    return SmtpProvider(config, channel=section.channel, name=section.name("smtp"))


@register("http_sms")
def _http_sms(section: Section) -> Provider:
    config = SmsGatewayConfig(url=section.url("url"), token=section.secret("token_env", required=False))
    return SmsGatewayProvider(
        config, options=section.http_options(), channel=section.channel, name=section.name("http_sms")
    )


def _id_text(section: Section, key: str, default: str | None = None) -> str:
    """An id that YAML may read as a number (`sdk_app_id: 1400006666`), as text."""
    value = section.values.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        section.read.add(key)
        return str(value)
    return section.text(key, default)


@register("aliyun_sms")
def _aliyun_sms(section: Section) -> Provider:
    config = AliyunSmsConfig(
        access_key_id=section.text("access_key_id"),
        access_key_secret=section.secret("access_key_secret_env"),
        sign_name=section.text("sign_name", ""),
        endpoint=section.url("endpoint", ALIYUN_ENDPOINT),
        receipt_token=section.secret("receipt_token_env", required=False),
    )
    return AliyunSmsProvider(
        config, options=section.http_options(), channel=section.channel, name=section.name("aliyun_sms")
    )


@register("tencentcloud_sms")
def _tencentcloud_sms(section: Section) -> Provider:
    config = TencentSmsConfig(
        secret_id=section.text("secret_id"),
        secret_key=section.secret("secret_key_env"),
        sdk_app_id=_id_text(section, "sdk_app_id"),
        sign_name=section.text("sign_name", ""),
        region=section.text("region", TENCENT_REGION),
        endpoint=section.url("endpoint", TENCENT_ENDPOINT),
        receipt_token=section.secret("receipt_token_env", required=False),
    )
    return TencentSmsProvider(
        config, options=section.http_options(), channel=section.channel, name=section.name("tencentcloud_sms")
    )


@register("twilio")
def _twilio(section: Section) -> Provider:
    sender, service = _id_text(section, "from", ""), section.text("messaging_service_sid", "")
    if bool(sender) == bool(service):
        raise section.error("from", "give `from` (a number or sender id) or `messaging_service_sid`, one")
    config = TwilioConfig(
        account_sid=section.text("account_sid"),
        auth_token=section.secret("auth_token_env"),
        sender=sender,
        messaging_service_sid=service,
        api_base=section.url("api_base", TWILIO_API_BASE),
    )
    return TwilioProvider(
        config, options=section.http_options(), channel=section.channel, name=section.name("twilio")
    )


@register("wechat")
def _wechat(section: Section) -> Provider:
    config = WeChatConfig(
        appid=section.text("appid"),
        secret=section.secret("secret_env"),
        api_base=section.url("api_base", wechat.DEFAULT_API_BASE),
        token_margin_s=section.number("token_margin_s", wechat.DEFAULT_TOKEN_MARGIN_S),
    )
    return WeChatProvider(
        config, options=section.http_options(), channel=section.channel, name=section.name("wechat")
    )


@register("fcm")
def _fcm(section: Section) -> Provider:
    source = section.one_of(
        "service_account_file",
        "service_account_env",
        "token_env",
        what="a service-account key file, its JSON in the environment, or a bearer token",
    )
    account, token = None, ""
    if source == "token_env":
        token = section.secret("token_env")
    else:
        text = section.file_text(source) if source == "service_account_file" else section.secret(source)
        try:
            account = ServiceAccount.from_json(text)
        except ValueError as exc:
            raise section.error(source, f"not a usable service-account key: {exc}") from None
    config = FcmConfig(
        project=section.text("project", account.project_id if account and account.project_id else None),
        token=token,
        api_base=section.url("api_base", push_fcm.DEFAULT_API_BASE),
        service_account=account,
        token_margin_s=section.number("token_margin_s", push_fcm.DEFAULT_TOKEN_MARGIN_S),
    )
    return FcmProvider(
        config, options=section.http_options(), channel=section.channel, name=section.name("fcm")
    )


@register("apns")
def _apns(section: Section) -> Provider:
    source = section.one_of(
        "key_file", "key_env", what="the .p8 key file, or its PEM text in the environment"
    )
    pem = section.file_text(source) if source == "key_file" else section.secret(source)
    try:
        key = ApnsKey.from_pem(pem, team_id=section.text("team_id"), key_id=section.text("key_id"))
    except ValueError as exc:
        raise section.error(source, str(exc)) from None
    push_type = section.text("push_type", "alert")
    if push_type not in push_apns.PUSH_TYPES:
        raise section.error(
            "push_type", f"one of {', '.join(sorted(push_apns.PUSH_TYPES))}, got {push_type!r}"
        )
    priority = section.integer("priority", 10) if section.present("priority") else None
    if priority not in (None, 1, 5, 10):
        raise section.error("priority", f"APNs takes 10, 5 or 1, got {priority!r}")
    refresh_s = section.number("token_refresh_s", push_apns.DEFAULT_TOKEN_REFRESH_S)
    if not push_apns.MIN_TOKEN_REFRESH_S <= refresh_s < push_apns.MAX_TOKEN_AGE_S:
        raise section.error(
            "token_refresh_s",
            f"at least 1200 (APNs refuses more frequent updates) and under 3600, got {refresh_s:g}",
        )
    config = ApnsConfig(
        key,
        topic=section.text("topic"),
        api_base=section.url("api_base", push_apns.PRODUCTION),
        push_type=push_type,
        priority=priority,
        expiration_s=section.number("expiration_s", 86400.0, allow_zero=True),
        token_refresh_s=refresh_s,
    )
    return ApnsProvider(
        config, options=section.http_options(), channel=section.channel, name=section.name("apns")
    )


@register("apprise", any_channel=True)
def _apprise(section: Section) -> Provider:
    notify_type = section.text("notify_type", "info")
    if notify_type not in chat_apprise.NOTIFY_TYPES:
        raise section.error(
            "notify_type", f"one of {', '.join(chat_apprise.NOTIFY_TYPES)}, got {notify_type!r}"
        )
    body_format = section.text("body_format", "text")
    if body_format not in chat_apprise.BODY_FORMATS:
        raise section.error(
            "body_format", f"one of {', '.join(chat_apprise.BODY_FORMATS)}, got {body_format!r}"
        )
    config = AppriseConfig(
        urls=section.secret("url_env"),
        notify_type=notify_type,
        body_format=body_format,
        timeout_s=section.number("timeout_s", 10.0),
    )
    try:
        return AppriseProvider(config, channel=section.channel, name=section.name("apprise"))
    except ValueError as exc:
        raise section.error("url_env", str(exc)) from None


@register("webhook", any_channel=True)
def _webhook(section: Section) -> Provider:
    destinations = DestinationPolicy.build(
        deny_networks=section.networks("deny_networks"),
        allow_networks=section.networks("allow_networks"),
        deny_private=section.flag("deny_private", False),
    )
    config = WebhookConfig(secret=section.secret("secret_env"), destinations=destinations)
    return WebhookProvider(
        config, options=section.http_options(), channel=section.channel, name=section.name("webhook")
    )


@register("inbox")
def _inbox(section: Section) -> Provider:
    return InboxProvider(section.inbox, channel=section.channel, name=section.name("inbox"))


@register("stub", any_channel=True)
def _stub(section: Section) -> Provider:
    delay_s = section.number("delay_s", 0.0, allow_zero=True)
    return StubProvider(section.channel, name=section.name("stub"), delay_s=delay_s)


def providers_from_config(
    config: Mapping[str, Any],
    env: Mapping[str, str],
    inbox: InboxStore,
    *,
    file: str = "<providers>",
    limiter: RateLimiter | None = None,
) -> dict[str, Provider]:
    """channel → provider for each entry of `config`; `file` names the source in errors;
    `limiter` keeps the providers' `rate` (default: this process's own).
    Raises `ProviderConfigError` (see the module docstring)."""
    limiter = limiter or MemoryRateLimiter()
    if not isinstance(config, Mapping):
        raise ProviderConfigError(file, "", "", "must be a mapping of channel to provider settings")
    providers: dict[str, Provider] = {}
    for channel, values in config.items():
        _check_channel(file, channel, values)
        if isinstance(values, list):
            providers[channel] = _failover(file, channel, values, env, inbox, limiter)
            continue
        if not isinstance(values, Mapping):
            raise ProviderConfigError(file, channel, "", "must be a mapping with a `type`, or a list of them")
        providers[channel] = _provider(Section(file, channel, values, env, inbox), limiter)
    return providers


def custom_channels(config: Mapping[str, Any], *, file: str = "<providers>") -> tuple[str, ...]:
    """The custom channels `config` declares (its channels that are not built in), in its order.
    Raises `ProviderConfigError` for a channel that is neither built in nor a custom channel
    served by a type that serves any channel."""
    if not isinstance(config, Mapping):
        return ()
    for channel, values in config.items():
        _check_channel(file, channel, values)
    return tuple(str(channel) for channel in config if channel not in KNOWN_CHANNELS)


def _check_channel(file: str, channel: Any, values: Any) -> None:
    if channel in KNOWN_CHANNELS:
        return
    any_types = ", ".join(sorted(_ANY_CHANNEL))
    if not isinstance(channel, str) or not CUSTOM_CHANNEL_NAME.fullmatch(channel):
        raise ProviderConfigError(
            file,
            str(channel),
            "",
            f"unknown channel; built in: {', '.join(KNOWN_CHANNELS)}; a custom channel's name is a-z, "
            f"0-9 and _ (a letter first, 32 at most), served by a type of {any_types}",
        )
    for index, entry in enumerate(values if isinstance(values, list) else [values]):
        type_name = entry.get("type") if isinstance(entry, Mapping) else None
        if isinstance(type_name, str) and type_name in _FACTORIES and type_name not in _ANY_CHANNEL:
            where = f"{channel}[{index}]" if isinstance(values, list) else channel
            raise ProviderConfigError(
                file,
                where,
                "type",
                f"{channel!r} is not a built-in channel ({', '.join(KNOWN_CHANNELS)}), and type "
                f"{type_name} serves only those; a custom channel takes a type of {any_types}",
            )


def _provider(section: Section, limiter: RateLimiter) -> Provider:
    type_name = section.text("type")
    factory = _FACTORIES.get(type_name)
    if factory is None:
        raise section.error(
            "type", f"unknown provider type {type_name!r}; known: {', '.join(provider_types())}"
        )
    provider = factory(section)
    unknown = sorted(str(key) for key in section.values if key not in section.read)
    if unknown:
        known = ", ".join(sorted(section.read))
        raise section.error(unknown[0], f"unknown key for type {type_name}; known: {known}")
    rate = section.values.get("rate")
    if rate is None:
        if "burst" in section.values:
            raise section.error("burst", "burst needs a rate")
        return provider
    found = _RATE.match(str(rate))
    if found is None or float(found.group(1)) <= 0:
        raise section.error("rate", f"a rate like 100/s, 600/min or 10000/h, got {rate!r}")
    per_s = float(found.group(1)) / _PER_S[found.group(2)]
    burst = section.integer("burst", max(1, int(per_s)))
    return RateLimitedProvider(provider, limiter, per_s, burst)


def _failover(
    file: str,
    channel: str,
    entries: list[Any],
    env: Mapping[str, str],
    inbox: InboxStore,
    limiter: RateLimiter,
) -> Provider:
    """A channel's list of providers: tried in order (or by `weight`), see channels/failover.py."""
    if not entries:
        raise ProviderConfigError(file, channel, "", "a list of providers must not be empty")
    providers, weights = [], []
    for index, values in enumerate(entries):
        where = f"{channel}[{index}]"
        if not isinstance(values, Mapping):
            raise ProviderConfigError(file, where, "", "must be a mapping with a `type`")
        if index and "retry" in values:
            raise ProviderConfigError(
                file, where, "retry", "the retry policy is the channel's: set it on the first"
            )
        section = Section(file, channel, values, env, inbox)
        section.read.add("weight")
        weight = values.get("weight")
        if weight is not None and (
            isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0
        ):
            raise ProviderConfigError(file, where, "weight", f"must be a positive number, got {weight!r}")
        weights.append(weight)
        try:
            providers.append(_provider(section, limiter))
        except ProviderConfigError as exc:
            raise ProviderConfigError(file, where, exc.key, exc.problem) from exc
    names = [p.name for p in providers]
    if len(set(names)) < len(names):
        raise ProviderConfigError(
            file, channel, "name", f"each provider of a channel needs its own name, got {names}"
        )
    if any(w is not None for w in weights) and not all(w is not None for w in weights):
        raise ProviderConfigError(
            file, channel, "weight", "give every provider of the channel a weight, or none"
        )
    if len(providers) == 1:
        return providers[0]
    chosen = [float(w) for w in weights if w is not None]
    return FailoverProvider(channel, providers, chosen or None)


def retry_policies_from_config(
    config: Mapping[str, Any], default: RetryPolicy, *, file: str = "<providers>"
) -> dict[str, RetryPolicy]:
    """channel → retry policy for each entry of `config` with a `retry` mapping (its keys over
    `default`). Raises `ProviderConfigError` naming the channel and key."""
    policies: dict[str, RetryPolicy] = {}
    for channel, values in (config or {}).items():
        if isinstance(values, list) and values:
            values = values[0]  # a list of providers: the first one carries the channel's policy
        spec = values.get("retry") if isinstance(values, Mapping) else None
        if spec is None:
            continue
        if not isinstance(spec, Mapping):
            raise ProviderConfigError(
                file, str(channel), "retry", "must be a mapping, e.g. {max_attempts: 5}"
            )
        for key, value in spec.items():
            where = f"retry.{key}"
            if key not in _RETRY_KEYS:
                known = ", ".join(sorted(_RETRY_KEYS))
                raise ProviderConfigError(file, str(channel), where, f"unknown key; known: {known}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
                raise ProviderConfigError(
                    file, str(channel), where, f"must be a positive number, got {value!r}"
                )
            if key == "max_attempts" and value != int(value):
                raise ProviderConfigError(file, str(channel), where, f"must be a whole number, got {value!r}")
        policies[str(channel)] = RetryPolicy(
            max_attempts=int(spec.get("max_attempts", default.max_attempts)),
            base_s=float(spec.get("base_s", default.base_s)),
            max_s=float(spec.get("max_s", default.max_s)),
            multiplier=float(spec.get("multiplier", default.multiplier)),
            timeout_s=float(spec.get("timeout_s", default.timeout_s)),
        )
    return policies


def read_providers_file(path: str | Path) -> Mapping[str, Any]:
    """The providers file's YAML document ({} when empty). An unreadable file or invalid YAML
    raises `ProviderConfigError` naming the file (and line)."""
    file = str(path)
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ProviderConfigError(file, "", "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else file
        raise ProviderConfigError(where, "", "", f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    return config if config is not None else {}


def load_providers_file(path: str | Path, env: Mapping[str, str], inbox: InboxStore) -> dict[str, Provider]:
    """`providers_from_config` for the YAML file at `path` (see `read_providers_file`)."""
    return providers_from_config(read_providers_file(path), env, inbox, file=str(path))


def default_providers(inbox: InboxStore) -> dict[str, Provider]:
    """Without a providers file: in_app delivers to `inbox`, every other channel to a stub that
    records the delivery and sends nothing (logged as a warning)."""
    stubbed = [channel for channel in KNOWN_CHANNELS if channel != "in_app"]
    log.warning(
        "no providers file: channels %s use stub providers (nothing is really sent)", ", ".join(stubbed)
    )
    providers: dict[str, Provider] = {channel: StubProvider(channel) for channel in stubbed}
    providers["in_app"] = InboxProvider(inbox)
    return providers
