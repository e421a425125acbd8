"""Per-channel message content from template files, rendered in a Jinja2 sandbox.

Layout: one directory per template, one file per part:

    <directory>/<template>/sms.txt                         sms: text
                           sms.yaml            (optional)  sms: template code, signature, params
                           email.subject, email.txt        email: subject, text
                           email.html          (optional)  email: HTML (autoescaped)
                           push.txt, push.title (optional) push: body, title
                           in_app.txt, in_app.title (opt.) in_app: text, title; fields = the data
                           wechat.yaml                     wechat: template_id, url, fields
                           webhook.txt         (optional)  webhook: text; fields = the data

`wechat.yaml`:

    template_id: TM00015                 # the official account's template id
    url: "https://example.com/o/{{ order_id }}"          # optional, rendered
    fields: {first: "Hi {{ name }}", keyword1: "{{ code }}"}   # each value rendered

`sms.yaml`, for the SMS providers that send a template registered with them (aliyun_sms,
tencentcloud_sms; twilio with a Content SID) rather than the text of `sms.txt`:

    template_code: SMS_154950909         # the provider's template code
    sign_name: Acme                      # the signature (签名) registered with it
    params: {code: "{{ code }}"}         # each value rendered; a list is numbered 1, 2, … (Tencent's {1})
    providers:                           # optional: variants that target a provider by its name
      - provider: tencent_backup
        template_code: "1110"
        params: ["{{ code }}", "5"]      # keys a variant leaves out come from the top level
        text: "Your code: {{ code }}"    # optional: the text instead of sms.txt's

The rendered content carries the top level as `template_id` / `sign_name` / `fields` and each
variant in `variants` under its provider's name: the provider that sends (with failover, the
one actually used) takes the variant that targets it.

Rendering uses `ImmutableSandboxedEnvironment` (templates cannot reach Python internals such as
``''.__class__`` nor mutate the message data) with `StrictUndefined` (a variable missing from the
data is an error, not an empty string). Only `.html` files are autoescaped. Subjects and titles
are stripped and must be one line. Files are re-read when they change.

Failures raise `TemplateError` carrying the template, channel, file and line (when known): no such
template, no variant for the channel, a syntax error, a missing variable, a sandbox violation or
any other error raised while rendering. A missing template directory is a `ConfigurationError`.
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from smart_dispatch.channels.base import Content
from smart_dispatch.errors import ConfigurationError
from smart_dispatch.errors import TemplateError as TemplateError  # defined there, with the tree

TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class Variant:
    """The files of one channel: all of `required` must exist; `optional` may."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


VARIANTS: Mapping[str, Variant] = {
    "sms": Variant(("sms.txt",), ("sms.yaml",)),
    "email": Variant(("email.subject", "email.txt"), ("email.html",)),
    "push": Variant(("push.txt",), ("push.title",)),
    "in_app": Variant(("in_app.txt",), ("in_app.title",)),
    "wechat": Variant(("wechat.yaml",)),
    "webhook": Variant((), ("webhook.txt",)),
}


class TemplateRenderer:
    """Renders the templates under `directory` (see the module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConfigurationError(f"template directory {self.directory} does not exist")
        self._env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(self.directory),
            undefined=jinja2.StrictUndefined,
            autoescape=lambda name: name is not None and name.endswith(".html"),
            auto_reload=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._wechat_cache: dict[Path, tuple[int, _WeChatSpec]] = {}
        self._sms_cache: dict[Path, tuple[int, _SmsSpec | None]] = {}

    def has(self, template: str, channel: str) -> bool:
        """True when `template` exists and has every file `channel` requires. Never raises."""
        variant = VARIANTS.get(channel)
        if variant is None or not TEMPLATE_NAME.fullmatch(template):
            return False
        folder = self.directory / template
        return folder.is_dir() and all((folder / name).is_file() for name in variant.required)

    def render(self, template: str, channel: str, data: Mapping[str, Any]) -> Content:
        """`template` rendered for `channel` with `data`. Raises `TemplateError`."""
        self._check(template, channel)
        part = _Parts(self, template, channel, data)
        if channel == "sms":
            return self._sms(template, part)
        if channel == "email":
            return Content(
                subject=part.line("email.subject"), text=part.text("email.txt"), html=part.text("email.html")
            )
        if channel == "push":
            return Content(title=part.line("push.title"), text=part.text("push.txt"))
        if channel == "in_app":  # the data travels with the inbox item (links, ids for the app)
            return Content(title=part.line("in_app.title"), text=part.text("in_app.txt"), fields=dict(data))
        if channel == "webhook":
            return Content(text=part.text("webhook.txt"), fields=dict(data))
        spec = self._wechat_spec(template)
        return Content(
            template_id=spec.template_id,
            url=part.string("url", spec.url),
            fields={name: part.string(f"fields.{name}", source) for name, source in spec.fields.items()},
        )

    def _check(self, template: str, channel: str) -> None:
        variant = VARIANTS.get(channel)
        if variant is None:
            raise TemplateError(template, channel, f"unknown channel; known: {', '.join(VARIANTS)}")
        if not TEMPLATE_NAME.fullmatch(template):
            raise TemplateError(template, channel, "invalid template name (letters, digits, _ . - only)")
        folder = self.directory / template
        if not folder.is_dir():
            raise TemplateError(template, channel, f"no such template in {self.directory}")
        missing = [name for name in variant.required if not (folder / name).is_file()]
        if missing:
            raise TemplateError(
                template, channel, f"no {channel} variant: missing {', '.join(missing)} in {folder}"
            )

    def _sms(self, template: str, part: _Parts) -> Content:
        text = part.text("sms.txt")
        spec = self._sms_spec(template)
        if spec is None:
            return Content(text=text)

        def content(variant: _SmsVariant, where: str) -> Content:
            return Content(
                text=text if variant.text is None else part.string(f"{where}text", variant.text, "sms.yaml"),
                template_id=variant.template_code,
                sign_name=variant.sign_name,
                fields={
                    name: part.string(f"{where}params.{name}", source, "sms.yaml")
                    for name, source in variant.params.items()
                },
            )

        variants = {name: content(variant, f"providers[{name}].") for name, variant in spec.providers.items()}
        return replace(content(spec.default, ""), variants=variants)

    def _sms_spec(self, template: str) -> _SmsSpec | None:
        path = self.directory / template / "sms.yaml"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        cached = self._sms_cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        spec = _SmsSpec.parse(template, path)
        self._sms_cache[path] = (mtime, spec)
        return spec

    def _wechat_spec(self, template: str) -> _WeChatSpec:
        path = self.directory / template / "wechat.yaml"
        mtime = path.stat().st_mtime_ns
        cached = self._wechat_cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        spec = _WeChatSpec.parse(template, path)
        self._wechat_cache[path] = (mtime, spec)
        return spec


@dataclass(frozen=True, slots=True)
class _WeChatSpec:
    template_id: str
    url: str
    fields: Mapping[str, str]

    @classmethod
    def parse(cls, template: str, path: Path) -> _WeChatSpec:
        def fail(problem: str, line: int = 0) -> TemplateError:
            return TemplateError(template, "wechat", problem, file=f"{template}/wechat.yaml", line=line)

        try:
            raw = yaml.safe_load(path.read_text("utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise fail(f"invalid YAML: {exc}", mark.line + 1 if mark else 0) from exc
        if not isinstance(raw, dict):
            raise fail("must be a mapping with template_id, url and fields")
        unknown = set(raw) - {"template_id", "url", "fields"}
        if unknown:
            raise fail(f"unknown keys {sorted(map(str, unknown))}; known: template_id, url, fields")
        template_id, url, fields = raw.get("template_id"), raw.get("url", ""), raw.get("fields", {})
        if not isinstance(template_id, str) or not template_id:
            raise fail("template_id must be a non-empty string")
        if not isinstance(url, str):
            raise fail("url must be a string")
        if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
            raise fail("fields must map field names to template strings")
        return cls(template_id, url, {str(k): v for k, v in fields.items()})


_SMS_KEYS = ("template_code", "sign_name", "params", "text")


@dataclass(frozen=True, slots=True)
class _SmsVariant:
    template_code: str
    sign_name: str
    params: Mapping[str, str]
    text: str | None  # None: sms.txt's


@dataclass(frozen=True, slots=True)
class _SmsSpec:
    default: _SmsVariant
    providers: Mapping[str, _SmsVariant]

    @classmethod
    def parse(cls, template: str, path: Path) -> _SmsSpec:
        def fail(problem: str, line: int = 0) -> TemplateError:
            return TemplateError(template, "sms", problem, file=f"{template}/sms.yaml", line=line)

        try:
            raw = yaml.safe_load(path.read_text("utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise fail(f"invalid YAML: {exc}", mark.line + 1 if mark else 0) from exc
        if not isinstance(raw, dict):
            raise fail("must be a mapping with template_code, sign_name, params and providers")
        unknown = set(raw) - {"template_code", "sign_name", "params", "providers"}
        if unknown:
            raise fail(
                f"unknown keys {sorted(map(str, unknown))}; known: {', '.join(_SMS_KEYS[:3])}, providers"
            )
        base = _SmsVariant("", "", {}, None)
        default = _variant(raw, base, "", fail)
        entries = raw.get("providers", [])
        if not isinstance(entries, list):
            raise fail("providers must be a list of {provider: <name>, template_code: …}")
        providers: dict[str, _SmsVariant] = {}
        for index, entry in enumerate(entries):
            where = f"providers[{index}]"
            if not isinstance(entry, dict):
                raise fail(f"{where} must be a mapping with a provider")
            name = entry.get("provider")
            if not isinstance(name, str) or not name:
                raise fail(f"{where}.provider must be a provider name (the providers file's `name`)")
            if name in providers:
                raise fail(f"{where}: a second variant for provider {name!r}")
            extra = set(entry) - {"provider", *_SMS_KEYS}
            if extra:
                raise fail(
                    f"{where}: unknown keys {sorted(map(str, extra))}; "
                    f"known: provider, {', '.join(_SMS_KEYS)}"
                )
            providers[name] = _variant(entry, default, f"{where}.", fail)
        return cls(default, providers)


def _variant(
    raw: Mapping[str, Any], base: _SmsVariant, where: str, fail: Callable[[str], TemplateError]
) -> _SmsVariant:
    """The keys of `raw` over `base`: template_code, sign_name, text strings; params a mapping of
    strings, or a list of them (numbered from 1)."""
    values: dict[str, Any] = {}
    for key in ("template_code", "sign_name", "text"):
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # an unquoted numeric template id (Tencent's are numbers)
        if not isinstance(value, str):
            raise fail(f"{where}{key} must be a string")
        values[key] = value
    params = raw.get("params")
    if params is not None:
        if isinstance(params, list):
            params = {str(index): value for index, value in enumerate(params, 1)}
        if not isinstance(params, dict) or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in params.values()
        ):
            raise fail(f"{where}params must map names to template strings, or list them")
        values["params"] = {str(k): str(v) for k, v in params.items()}
    return replace(base, **values)


class _Parts:
    """Renders the parts of one template for one channel, translating Jinja's errors."""

    def __init__(self, renderer: TemplateRenderer, template: str, channel: str, data: Mapping[str, Any]):
        self._env = renderer._env
        self._directory = renderer.directory
        self._template = template
        self._channel = channel
        self._data = data

    def text(self, name: str) -> str:
        """The file `name` rendered; "" when that (optional) file does not exist."""
        path = self._directory / self._template / name
        if not path.is_file():
            return ""
        file = f"{self._template}/{name}"
        try:
            return self._env.get_template(file).render(self._data)
        except Exception as exc:  # any error while rendering is the template's, not ours
            raise self._error(exc, file, _template_line(exc, os.path.normpath(path))) from exc

    def line(self, name: str) -> str:
        """A one-line part (subject, title), stripped."""
        text = self.text(name).strip()
        if "\n" in text or "\r" in text:
            file = f"{self._template}/{name}"
            raise TemplateError(self._template, self._channel, "must render to one line", file=file)
        return text

    def string(self, where: str, source: str, file: str = "wechat.yaml") -> str:
        """An inline template from `file` (wechat.yaml, sms.yaml); `where` (e.g. ``fields.first``)
        names it in errors."""
        try:
            return self._env.from_string(source).render(self._data)
        except Exception as exc:
            raise self._error(exc, f"{self._template}/{file}", 0, where=where) from exc

    def _error(self, exc: Exception, file: str, line: int, *, where: str = "") -> TemplateError:
        if isinstance(exc, jinja2.TemplateSyntaxError) and not where:
            line = exc.lineno
        problem = f"{where + ': ' if where else ''}{type(exc).__name__}: {exc}"
        return TemplateError(self._template, self._channel, problem, file=file, line=line)


def _template_line(exc: BaseException, filename: str) -> int:
    """The template line an exception was raised at: Jinja rewrites tracebacks so that frames
    of compiled templates carry the template's file name and line. 0 when not found."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == filename and frame.lineno:
            return frame.lineno
    return 0
