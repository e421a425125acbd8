"""Providers from a providers file: types, env secrets, and errors naming file, channel and key."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from smart_dispatch.channels.base import Provider
from smart_dispatch.channels.destinations import DEFAULT_POLICY, DestinationPolicy
from smart_dispatch.channels.email_smtp import SmtpProvider
from smart_dispatch.channels.in_app import InboxProvider
from smart_dispatch.channels.push_fcm import FcmProvider
from smart_dispatch.channels.registry import (
    ProviderConfigError,
    Section,
    default_providers,
    load_providers_file,
    providers_from_config,
    register,
)
from smart_dispatch.channels.sms_http import SmsGatewayProvider
from smart_dispatch.channels.stub import StubProvider
from smart_dispatch.channels.webhook import WebhookProvider
from smart_dispatch.channels.wechat import WeChatProvider
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.inbox.memory import MemoryInboxStore

EXAMPLE = """\
email: {type: smtp, host: 127.0.0.1, port: 1025, from: "Smart Dispatch <noreply@example.com>",
        starttls: false, username: "", password_env: SMTP_PASSWORD, timeout_s: 5}
sms: {type: http_sms, url: "http://127.0.0.1:9000/sms", token_env: SMS_TOKEN, timeout_s: 3}
wechat: {type: wechat, api_base: "https://api.weixin.qq.com", appid: wx123, secret_env: WECHAT_SECRET}
push: {type: fcm, api_base: "https://fcm.googleapis.com", project: my-project, token_env: FCM_TOKEN}
webhook: {type: webhook, secret_env: WEBHOOK_SECRET, timeout_s: 3}
in_app: {type: inbox}
"""
ENV = {"SMS_TOKEN": "sms-tok", "WECHAT_SECRET": "wx-sec", "FCM_TOKEN": "fcm-tok", "WEBHOOK_SECRET": "wh-sec"}


@pytest.fixture
async def closing() -> AsyncIterator[list[dict[str, Provider]]]:
    """Providers put here are closed after the test."""
    built: list[dict[str, Provider]] = []
    yield built
    for providers in built:
        for provider in providers.values():
            await provider.close()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.yaml"
    path.write_text(text)
    return path


async def test_example_file_builds_every_provider_with_secrets_from_env(tmp_path: Path, closing) -> None:
    inbox = MemoryInboxStore()

    providers = load_providers_file(write(tmp_path, EXAMPLE), ENV, inbox)
    closing.append(providers)

    kinds = {channel: type(p) for channel, p in providers.items()}
    assert kinds == {
        "email": SmtpProvider,
        "sms": SmsGatewayProvider,
        "wechat": WeChatProvider,
        "push": FcmProvider,
        "webhook": WebhookProvider,
        "in_app": InboxProvider,
    }
    assert {channel: p.channel for channel, p in providers.items()} == {c: c for c in providers}
    email, sms, wechat = providers["email"], providers["sms"], providers["wechat"]
    assert (
        isinstance(email, SmtpProvider)
        and isinstance(sms, SmsGatewayProvider)
        and isinstance(wechat, WeChatProvider)
    )
    assert (email.config.port, email.config.starttls, email.config.password, email.config.timeout_s) == (
        1025,
        False,
        "",
        5.0,
    )
    assert (sms.config.token, sms.options.timeout_s) == ("sms-tok", 3.0)
    assert (wechat.config.appid, wechat.config.secret) == ("wx123", "wx-sec")
    assert providers["in_app"].inbox is inbox  # type: ignore[attr-defined]


async def test_name_can_be_set_and_defaults_to_the_type(closing) -> None:
    providers = providers_from_config(
        {
            "sms": {"type": "http_sms", "url": "http://x/sms", "name": "gateway-eu"},
            "in_app": {"type": "inbox"},
        },
        {},
        MemoryInboxStore(),
    )
    closing.append(providers)

    assert (providers["sms"].name, providers["in_app"].name) == ("gateway-eu", "inbox")


@pytest.mark.parametrize(
    ("text", "channel", "key", "words"),
    [
        (
            "sms: {type: carrier-pigeon}",
            "sms",
            "type",
            "unknown provider type 'carrier-pigeon'; known: ",
        ),
        ("sms: {url: 'http://x'}", "sms", "type", "required key is missing"),
        ("sms: {type: http_sms}", "sms", "url", "required key is missing"),
        ("sms: {type: http_sms, url: 'gateway:9000/sms'}", "sms", "url", "must be an http(s) URL"),
        (
            "push: {type: fcm, project: p, token_env: FCM_TOKEN, api_base: fcm}",
            "push",
            "api_base",
            "http(s) URL",
        ),
        (
            "wechat: {type: wechat, appid: wx1, secret_env: NOT_SET}",
            "wechat",
            "secret_env",
            "NOT_SET is not set",
        ),
        (
            "push: {type: fcm, project: p}",
            "push",
            "service_account_file",
            "give exactly one of service_account_file, service_account_env, token_env",
        ),
        (
            "email: {type: smtp, host: h, port: 25, from: a@b.c, startls: true}",
            "email",
            "startls",
            "unknown key",
        ),
        ("email: {type: smtp, host: h, port: twenty-five, from: a@b.c}", "email", "port", "must be float"),
        ("email: {type: smtp, host: h, port: 25, from: nobody}", "email", "from", "not an e-mail address"),
        (
            "email: {type: smtp, host: h, port: 25, from: a@b.c, username: u}",
            "email",
            "password_env",
            "missing",
        ),
        (
            "email: {type: smtp, host: h, port: 25, from: a@b.c, starttls: true, tls: true}",
            "email",
            "tls",
            "not both",
        ),
        ("sms: {type: http_sms, url: 'http://x', timeout_s: 0}", "sms", "timeout_s", "positive"),
        (
            "sms: {type: http_sms, url: 'http://x', max_connections: 1.5}",
            "sms",
            "max_connections",
            "whole number",
        ),
        (
            "webhook: {type: webhook, secret_env: WEBHOOK_SECRET, deny_networks: 10.0.0.0/8}",
            "webhook",
            "deny_networks",
            "must be list",
        ),
        (
            "webhook: {type: webhook, secret_env: WEBHOOK_SECRET, deny_networks: [10.0.0.0/8, 10.0.0.1/8]}",
            "webhook",
            "deny_networks",
            "item 2: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?",
        ),
        (
            "webhook: {type: webhook, secret_env: WEBHOOK_SECRET, allow_networks: [internal]}",
            "webhook",
            "allow_networks",
            "item 1: 'internal' is not an IP network in CIDR notation",
        ),
        (
            "webhook: {type: webhook, secret_env: WEBHOOK_SECRET, allow_networks: [10]}",
            "webhook",
            "allow_networks",
            "item 1: must be a CIDR network as text, got 10",
        ),
        (
            "webhook: {type: webhook, secret_env: WEBHOOK_SECRET, deny_private: 'true'}",
            "webhook",
            "deny_private",
            "must be bool",
        ),
        (
            "webhook: {type: webhook, secret_env: WEBHOOK_SECRET, deny_privat: true}",
            "webhook",
            "deny_privat",
            "unknown key for type webhook; known: allow_networks, burst, deny_networks, deny_private",
        ),
        ("fax: {type: http_sms, url: 'http://x'}", "fax", "type", "type http_sms serves only those"),
        ("Fax: {type: stub}", "Fax", "", "unknown channel; built in: sms, email"),
        ("sms: [http_sms]", "sms[0]", "", "must be a mapping with a `type`"),
        ("sms: 5", "sms", "", "must be a mapping with a `type`, or a list of them"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " not in value else None,
)
def test_errors_name_file_channel_and_key(
    tmp_path: Path, text: str, channel: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ProviderConfigError) as caught:
        load_providers_file(path, ENV, MemoryInboxStore())

    error = caught.value
    assert isinstance(error, ConfigurationError)
    assert (error.file, error.channel, error.key) == (str(path), channel, key)
    assert str(path) in str(error) and words in str(error)


async def test_webhook_destination_keys_build_its_policy(tmp_path: Path, closing) -> None:
    text = """\
webhook:
  type: webhook
  secret_env: WEBHOOK_SECRET
  deny_private: true
  deny_networks: ["203.0.113.0/24"]
  allow_networks: ["10.1.0.0/16", "fd00:1::/64"]
"""
    providers = load_providers_file(write(tmp_path, text), ENV, MemoryInboxStore())
    closing.append(providers)

    webhook = providers["webhook"]
    assert isinstance(webhook, WebhookProvider)
    assert webhook.config.destinations == DestinationPolicy.build(
        deny_private=True, deny_networks=["203.0.113.0/24"], allow_networks=["10.1.0.0/16", "fd00:1::/64"]
    )


async def test_webhook_destinations_default_to_the_default_policy(tmp_path: Path, closing) -> None:
    providers = load_providers_file(write(tmp_path, EXAMPLE), ENV, MemoryInboxStore())
    closing.append(providers)

    webhook = providers["webhook"]
    assert isinstance(webhook, WebhookProvider) and webhook.config.destinations == DEFAULT_POLICY


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "sms:\n  type: http_sms\n  url: [unclosed\n")

    with pytest.raises(ProviderConfigError) as caught:
        load_providers_file(path, {}, MemoryInboxStore())

    assert f"{path}:" in str(caught.value) and "invalid YAML" in str(caught.value)


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ProviderConfigError, match="cannot read"):
        load_providers_file(tmp_path / "nope.yaml", {}, MemoryInboxStore())


def test_empty_file_configures_no_provider(tmp_path: Path) -> None:
    assert load_providers_file(write(tmp_path, "# nothing yet\n"), {}, MemoryInboxStore()) == {}


def test_stub_type_with_delay(tmp_path: Path) -> None:
    providers = load_providers_file(
        write(tmp_path, "sms: {type: stub, delay_s: 0.01}"), {}, MemoryInboxStore()
    )

    stub = providers["sms"]
    assert isinstance(stub, StubProvider) and (stub.channel, stub.delay_s) == ("sms", 0.01)


def test_new_provider_types_can_be_registered() -> None:
    @register("test-loopback")
    def _loopback(section: Section) -> StubProvider:
        return StubProvider(section.channel, name=section.text("label"))

    providers = providers_from_config(
        {"sms": {"type": "test-loopback", "label": "lb"}}, {}, MemoryInboxStore()
    )

    assert providers["sms"].name == "lb"


def test_default_providers_stub_everything_but_the_inbox(caplog: pytest.LogCaptureFixture) -> None:
    inbox = MemoryInboxStore()

    with caplog.at_level(logging.WARNING):
        providers = default_providers(inbox)

    assert isinstance(providers["in_app"], InboxProvider) and providers["in_app"].inbox is inbox
    stubs = {channel for channel, p in providers.items() if isinstance(p, StubProvider)}
    assert stubs == {"sms", "email", "wechat", "push", "webhook"}
    assert all(providers[channel].channel == channel for channel in providers)
    assert "stub" in caplog.text and "sms" in caplog.text


def test_a_channels_retry_policy_comes_from_the_providers_file_over_the_defaults():
    from smart_dispatch.channels.registry import retry_policies_from_config
    from smart_dispatch.dispatch.resilience import RetryPolicy

    default = RetryPolicy(max_attempts=3, base_s=0.5, timeout_s=10.0)
    config = {
        "sms": {"type": "stub", "retry": {"max_attempts": 6, "timeout_s": 2}},
        "email": {"type": "stub"},
    }
    policies = retry_policies_from_config(config, default, file="p.yaml")

    assert policies == {"sms": RetryPolicy(max_attempts=6, base_s=0.5, timeout_s=2.0)}


@pytest.mark.parametrize(
    ("retry", "problem"),
    [
        ({"attempts": 2}, "p.yaml: sms.retry.attempts: unknown key; known: base_s, max_attempts"),
        ({"max_attempts": 0}, "p.yaml: sms.retry.max_attempts: must be a positive number, got 0"),
        ({"max_attempts": 2.5}, "p.yaml: sms.retry.max_attempts: must be a whole number, got 2.5"),
        ({"base_s": True}, "p.yaml: sms.retry.base_s: must be a positive number, got True"),
        (5, "p.yaml: sms.retry: must be a mapping"),
    ],
)
def test_a_bad_retry_policy_names_the_channel_and_key(retry, problem):
    from smart_dispatch.channels.registry import ProviderConfigError, retry_policies_from_config
    from smart_dispatch.dispatch.resilience import RetryPolicy

    with pytest.raises(ProviderConfigError) as raised:
        retry_policies_from_config({"sms": {"type": "stub", "retry": retry}}, RetryPolicy(), file="p.yaml")
    assert str(raised.value).startswith(problem)


def test_a_channel_may_list_several_providers_tried_in_order_or_by_weight():
    from smart_dispatch.channels.failover import FailoverProvider

    config = {
        "sms": [{"name": "a", "type": "stub"}, {"name": "b", "type": "stub"}],
        "push": [{"name": "p1", "type": "stub", "weight": 3}, {"name": "p2", "type": "stub", "weight": 1}],
        "email": [{"name": "only", "type": "stub"}],
    }
    providers = providers_from_config(config, ENV, MemoryInboxStore(), file="p.yaml")

    sms, push = providers["sms"], providers["push"]
    assert isinstance(sms, FailoverProvider) and [p.name for p in sms.order()] == ["a", "b"]
    assert isinstance(push, FailoverProvider)
    firsts = [push.order()[0].name for _ in range(2000)]
    assert 0.70 < firsts.count("p1") / len(firsts) < 0.80  # 3 : 1
    assert providers["email"].name == "only"  # a list of one is that provider


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([], "p.yaml: sms: a list of providers must not be empty"),
        (
            [{"type": "stub"}, {"type": "stub"}],
            "p.yaml: sms.name: each provider of a channel needs its own name",
        ),
        (
            [{"name": "a", "type": "stub", "weight": 2}, {"name": "b", "type": "stub"}],
            "p.yaml: sms.weight: give every",
        ),
        (
            [{"name": "a", "type": "stub"}, {"name": "b", "type": "stub", "retry": {"max_attempts": 2}}],
            "p.yaml: sms[1].retry: the retry policy is the channel's",
        ),
        (
            [{"name": "a", "type": "stub"}, {"name": "b", "type": "nope"}],
            "p.yaml: sms[1].type: unknown provider type 'nope'",
        ),
        ([{"name": "a", "type": "stub", "weight": -1}], "p.yaml: sms[0].weight: must be a positive number"),
    ],
)
def test_a_bad_provider_list_names_the_entry(entries, problem):
    with pytest.raises(ProviderConfigError) as raised:
        providers_from_config({"sms": entries}, ENV, MemoryInboxStore(), file="p.yaml")
    assert str(raised.value).startswith(problem)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"rate": "fast"}, "p.yaml: sms.rate: a rate like 100/s, 600/min or 10000/h, got 'fast'"),
        ({"rate": "0/s"}, "p.yaml: sms.rate: a rate like"),
        ({"burst": 5}, "p.yaml: sms.burst: burst needs a rate"),
        ({"rate": "10/s", "burst": 0}, "p.yaml: sms.burst: must be a positive whole number"),
    ],
)
def test_a_bad_rate_names_the_key(settings, problem):
    with pytest.raises(ProviderConfigError) as raised:
        providers_from_config({"sms": {"type": "stub", **settings}}, ENV, MemoryInboxStore(), file="p.yaml")
    assert str(raised.value).startswith(problem)


def test_a_rate_wraps_the_provider_and_keeps_its_name():
    from smart_dispatch.ratelimit.provider import RateLimitedProvider

    providers = providers_from_config(
        {"sms": {"type": "stub", "name": "gw", "rate": "600/min"}}, ENV, MemoryInboxStore(), file="p.yaml"
    )
    sms = providers["sms"]
    assert isinstance(sms, RateLimitedProvider) and sms.name == "gw"
    assert (sms.rate_per_s, sms.burst) == (10.0, 10)
