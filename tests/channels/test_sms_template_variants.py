"""SMS templates registered with a provider (`sms.yaml`): template code, signature and parameters,
per provider; and the variant a provider is handed, alone or behind failover."""

from __future__ import annotations

from pathlib import Path

import pytest
from smart_dispatch.channels.base import Content
from smart_dispatch.channels.failover import FailoverProvider
from smart_dispatch.channels.stub import StubProvider
from smart_dispatch.templates import TemplateError, TemplateRenderer

from tests.channels.helpers import delivery

SMS_YAML = """
template_code: SMS_154950909
sign_name: Acme
params: {code: "{{ code }}", minutes: "5"}
providers:
  - provider: tencent_backup
    template_code: 1110
    sign_name: Acme Tencent
    params: ["{{ code }}", "5"]
  - provider: twilio_us
    text: "Acme: {{ code }} is your code"
"""


def make(tmp_path: Path, files: dict[str, str]) -> TemplateRenderer:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return TemplateRenderer(tmp_path)


def test_sms_yaml_renders_the_default_and_a_variant_per_provider(tmp_path: Path) -> None:
    renderer = make(tmp_path, {"otp/sms.txt": "Your code is {{ code }}", "otp/sms.yaml": SMS_YAML})

    content = renderer.render("otp", "sms", {"code": "492817"})

    assert (content.text, content.template_id, content.sign_name) == (
        "Your code is 492817",
        "SMS_154950909",
        "Acme",
    )
    assert content.fields == {"code": "492817", "minutes": "5"}
    tencent = content.for_provider("tencent_backup")
    assert (tencent.template_id, tencent.sign_name, dict(tencent.fields)) == (
        "1110",
        "Acme Tencent",
        {"1": "492817", "2": "5"},
    )
    assert tencent.text == "Your code is 492817"  # a variant without text keeps sms.txt's
    twilio = content.for_provider("twilio_us")
    assert twilio.text == "Acme: 492817 is your code"
    assert (twilio.template_id, twilio.sign_name) == ("SMS_154950909", "Acme")  # the rest inherited
    assert content.for_provider("someone_else") is content


def test_without_sms_yaml_sms_is_text_only(tmp_path: Path) -> None:
    renderer = make(tmp_path, {"otp/sms.txt": "Your code is {{ code }}"})

    assert renderer.render("otp", "sms", {"code": "1"}) == Content(text="Your code is 1")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1, 2]", "must be a mapping"),
        ("template_cod: X", "unknown keys ['template_cod']"),
        ("params: {code: [1]}", "params must map names"),
        ("providers: {a: 1}", "providers must be a list"),
        ("providers: [{template_code: X}]", "providers[0].provider must be a provider name"),
        ("providers: [{provider: a}, {provider: a}]", "a second variant for provider 'a'"),
        ("providers: [{provider: a, colour: red}]", "unknown keys ['colour']"),
        ("template_code: [x", "invalid YAML"),
    ],
)
def test_a_wrong_sms_yaml_is_a_template_error_naming_the_file(
    tmp_path: Path, text: str, problem: str
) -> None:
    renderer = make(tmp_path, {"otp/sms.txt": "hi", "otp/sms.yaml": text})

    with pytest.raises(TemplateError, match=r"otp/sms\.yaml") as caught:
        renderer.render("otp", "sms", {})
    assert problem in caught.value.problem


def test_a_missing_variable_in_a_variant_names_where(tmp_path: Path) -> None:
    renderer = make(tmp_path, {"otp/sms.txt": "hi", "otp/sms.yaml": SMS_YAML})

    with pytest.raises(TemplateError, match=r"providers\[tencent_backup\]\.params\.1"):
        renderer.render("otp", "sms", {})


async def test_failover_hands_each_provider_its_own_variant(tmp_path: Path) -> None:
    renderer = make(tmp_path, {"otp/sms.txt": "Your code is {{ code }}", "otp/sms.yaml": SMS_YAML})
    content = renderer.render("otp", "sms", {"code": "492817"})
    primary, backup = StubProvider("sms", name="aliyun_primary"), StubProvider("sms", name="tencent_backup")
    primary.fail_next(retryable=True)
    failover = FailoverProvider("sms", [primary, backup])

    result = await failover.send(delivery(content=content))

    assert result.provider == "tencent_backup"
    assert backup.delivered[0].content.template_id == "1110"
    assert backup.delivered[0].content.fields == {"1": "492817", "2": "5"}
