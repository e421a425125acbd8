"""Per-channel rendering: the shipped templates, and every way a template can be wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from smart_dispatch.channels.base import Content
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.templates import TemplateError, TemplateRenderer

SHIPPED = Path(__file__).resolve().parents[2] / "templates"
CHANNELS = ("sms", "email", "push", "in_app", "wechat", "webhook")


@pytest.fixture
def shipped() -> TemplateRenderer:
    return TemplateRenderer(SHIPPED)


def make(tmp_path: Path, files: dict[str, str]) -> TemplateRenderer:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return TemplateRenderer(tmp_path)


@pytest.mark.parametrize("template", ["welcome", "otp"])
def test_shipped_templates_cover_every_channel(shipped: TemplateRenderer, template: str) -> None:
    for channel in CHANNELS:
        assert shipped.has(template, channel), channel
        shipped.render(template, channel, {"name": "Ann", "code": "123"})


def test_otp_renders_per_channel(shipped: TemplateRenderer) -> None:
    data = {"code": "492817"}

    assert shipped.render("otp", "sms", data) == Content(text="Your code is 492817")
    email = shipped.render("otp", "email", data)
    assert email.subject == "Your code is 492817"
    assert email.text.startswith("Your code is 492817\n") and "10 minutes" in email.text
    assert "<strong>492817</strong>" in email.html
    assert shipped.render("otp", "push", data) == Content(
        title="Your sign-in code", text="Your code is 492817"
    )
    assert shipped.render("otp", "in_app", data) == Content(
        title="Your sign-in code", text="Your code is 492817", fields={"code": "492817"}
    )
    wechat = shipped.render("otp", "wechat", data)
    assert (wechat.template_id, wechat.url) == ("OTP_TEMPLATE_ID", "")
    assert wechat.fields["keyword1"] == "492817" and wechat.fields["remark"] == "Your code is 492817"
    assert shipped.render("otp", "webhook", data) == Content(
        text="Your code is 492817", fields={"code": "492817"}
    )


def test_html_is_autoescaped_and_text_is_not(shipped: TemplateRenderer) -> None:
    data = {"name": "<script>x</script>", "url": "https://example.com/?a=1&b=2"}

    email = shipped.render("welcome", "email", data)

    assert "&lt;script&gt;" in email.html and "<script>" not in email.html
    assert 'href="https://example.com/?a=1&amp;b=2"' in email.html
    assert "Hi <script>x</script>," in email.text
    assert shipped.render("welcome", "wechat", data).url == "https://example.com/?a=1&b=2"


def test_missing_variable_is_an_error_with_its_line(tmp_path: Path) -> None:
    renderer = make(tmp_path, {"receipt/sms.txt": "Hi {{ name }},\nyour total\nis {{ total }}.\n"})

    with pytest.raises(TemplateError) as caught:
        renderer.render("receipt", "sms", {"name": "Ann"})

    error = caught.value
    assert (error.template, error.channel, error.file, error.line) == ("receipt", "sms", "receipt/sms.txt", 3)
    assert "'total' is undefined" in str(error)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    renderer = make(tmp_path, {"t/push.txt": "ok\n{% if x %}never closed\n"})

    with pytest.raises(TemplateError) as caught:
        renderer.render("t", "push", {"x": 1})

    assert (caught.value.file, caught.value.line) == ("t/push.txt", 2)
    assert "TemplateSyntaxError" in caught.value.problem


@pytest.mark.parametrize(
    "source",
    ["{{ ''.__class__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ data.update(x=1) }}"],
)
def test_sandbox_blocks_python_internals_and_mutation(tmp_path: Path, source: str) -> None:
    renderer = make(tmp_path, {"evil/sms.txt": source})

    with pytest.raises(TemplateError) as caught:
        renderer.render("evil", "sms", {"data": {"a": 1}})

    assert "SecurityError" in caught.value.problem or "unsafe" in caught.value.problem


def test_missing_template_and_missing_variant_are_clear(tmp_path: Path) -> None:
    renderer = make(tmp_path, {"promo/sms.txt": "hi", "promo/email.subject": "Hi"})

    with pytest.raises(TemplateError, match="no such template"):
        renderer.render("nope", "sms", {})
    with pytest.raises(TemplateError, match=r"no email variant: missing email\.txt"):
        renderer.render("promo", "email", {})
    with pytest.raises(TemplateError, match="unknown channel"):
        renderer.render("promo", "fax", {})
    assert renderer.has("promo", "sms")
    assert not renderer.has("promo", "email")
    assert not renderer.has("promo", "push")
    assert renderer.has("promo", "webhook")  # webhook text is optional: the payload is the data
    assert not renderer.has("nope", "sms")


@pytest.mark.parametrize("name", ["../promo", "promo/../promo", "/etc", "", ".hidden"])
def test_template_names_cannot_leave_the_directory(tmp_path: Path, name: str) -> None:
    renderer = make(tmp_path / "templates", {"promo/sms.txt": "hi"})
    (tmp_path / "sms.txt").write_text("outside")

    assert not renderer.has(name, "sms")
    with pytest.raises(TemplateError, match="invalid template name"):
        renderer.render(name, "sms", {})


def test_missing_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        TemplateRenderer(tmp_path / "absent")


def test_subject_must_be_one_line(tmp_path: Path) -> None:
    renderer = make(tmp_path, {"t/email.subject": "Hi\n{{ more }}\n", "t/email.txt": "body"})

    with pytest.raises(TemplateError, match="one line"):
        renderer.render("t", "email", {"more": "Bcc: x@example.org"})


def test_wechat_yaml_errors_name_the_field(tmp_path: Path) -> None:
    renderer = make(tmp_path, {"w/wechat.yaml": "template_id: T1\nfields: {first: '{{ missing }}'}\n"})

    with pytest.raises(TemplateError) as caught:
        renderer.render("w", "wechat", {})

    assert caught.value.file == "w/wechat.yaml"
    assert "fields.first" in caught.value.problem and "'missing' is undefined" in caught.value.problem


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("fields: {a: b}\n", "template_id"),
        ("template_id: T\nfields: [a]\n", "fields must map"),
        ("template_id: T\ncolour: red\n", "unknown keys"),
        ("template_id: T\nfields: {a: [unclosed\n", "invalid YAML"),
    ],
)
def test_invalid_wechat_yaml(tmp_path: Path, text: str, words: str) -> None:
    renderer = make(tmp_path, {"w/wechat.yaml": text})

    with pytest.raises(TemplateError, match=words):
        renderer.render("w", "wechat", {})


def test_edited_templates_are_picked_up(tmp_path: Path) -> None:
    renderer = make(tmp_path, {"t/sms.txt": "v1", "t/wechat.yaml": "template_id: A\n"})
    assert renderer.render("t", "sms", {}).text == "v1"
    assert renderer.render("t", "wechat", {}).template_id == "A"

    for name, text in {"t/sms.txt": "v2", "t/wechat.yaml": "template_id: B\n"}.items():
        path = tmp_path / name
        path.write_text(text)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))  # a later mtime

    assert renderer.render("t", "sms", {}).text == "v2"
    assert renderer.render("t", "wechat", {}).template_id == "B"
