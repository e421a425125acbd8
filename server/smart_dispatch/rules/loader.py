"""Loading a rules directory: every `*.yaml` / `*.yml` file, validated, as one `Ruleset`.

A file (all keys optional):

    categories: [otp, marketing]          message categories these rules cover
    caps:                                 frequency caps rules may apply
      - {name: marketing_hourly, limit: 1, window: 1h, scope: user, channel: sms}
    rules:
      - name: otp_now
        priority: 10                      lower fires first (0..65535, default 100)
        shadow: false                     true: evaluate and report, do not enforce
        when: {category: otp}             durable-rules condition (see conditions.py)
        then: {prefer: [sms], fallback: [email], bypass_caps: true, bypass_quiet_hours: true}

Every problem raises `RuleFileError(file, line, problem)`; nothing is half-loaded. A file may
have at most `MAX_FILE_BYTES` bytes and a directory at most `MAX_RULES` rules (see also the
bounds of yaml_lines.py and network.py).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from datetime import time
from pathlib import Path
from typing import Any, get_args

from smart_dispatch.counters.base import CapSpec
from smart_dispatch.domain import KNOWN_CHANNELS
from smart_dispatch.errors import RuleFileError
from smart_dispatch.rules.conditions import normalize_condition
from smart_dispatch.rules.model import Effects, OnCap, QuietHours, QuietPolicy, Rule, Ruleset
from smart_dispatch.rules.yaml_lines import LineDict, load_yaml

DEFAULT_PRIORITY = 100
#: Bytes of one rule file (checked before it is read).
MAX_FILE_BYTES = 2 * 1024 * 1024
#: Rules of one rules directory.
MAX_RULES = 10_000
MAX_PRIORITY = 65535
_FILE_KEYS = frozenset({"categories", "caps", "rules"})
_CAP_KEYS = frozenset({"name", "limit", "window", "scope", "channel", "description"})
_RULE_KEYS = frozenset({"name", "priority", "when", "then", "shadow", "description"})
_CHANNEL_LIST_EFFECTS = ("prefer", "deny", "only", "fallback")
_BOOL_EFFECTS = ("bypass_caps", "bypass_quiet_hours")
EFFECT_NAMES = frozenset(
    {*_CHANNEL_LIST_EFFECTS, *_BOOL_EFFECTS, "caps", "on_cap", "quiet_hours", "suppress", "escalate_after"}
)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def rule_files(directory: Path) -> list[Path]:
    """The rule files of `directory` in load order (hidden entries, e.g. ConfigMap `..data`,
    are skipped; symlinks are followed)."""
    return sorted(
        p
        for p in directory.iterdir()
        if not p.name.startswith(".") and p.suffix in (".yaml", ".yml") and p.is_file()
    )


def load_ruleset(directory: Path) -> Ruleset:
    """Read, validate and combine every rule file of `directory`."""
    return parse_ruleset(read_sources(directory))


def read_sources(directory: Path) -> dict[str, str]:
    """`{file path: text}` of the rule files of `directory`, in load order."""
    try:
        if not directory.is_dir():
            raise RuleFileError(str(directory), 0, "rules directory does not exist")
        files = rule_files(directory)
        if not files:
            raise RuleFileError(str(directory), 0, "no rule files (*.yaml, *.yml) in directory")
        for path in files:
            _check_file_size(str(path), path.stat().st_size)
        return {str(path): path.read_text(encoding="utf-8") for path in files}
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError(str(directory), 0, f"cannot read rule files: {exc}") from exc


def _check_file_size(file: str, size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise RuleFileError(
            file,
            0,
            f"{size:,} bytes; a rule file may have at most {MAX_FILE_BYTES:,} (split it into several)",
        )


def content_version(sources: Mapping[str, str]) -> str:
    """The version of a set of rule files: a hash of their names and contents."""
    digest = hashlib.sha256()
    for file, text in sources.items():
        digest.update(Path(file).name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()[:12]


def parse_ruleset(sources: Mapping[str, str]) -> Ruleset:
    """Validate rule-file texts (`{file name: YAML text}`) into one `Ruleset`."""
    builder = _Builder()
    for file, text in sources.items():
        builder.add_file(file, text)
    return builder.build(content_version(sources), tuple(sources))


class _Builder:
    def __init__(self) -> None:
        self.caps: dict[str, CapSpec] = {}
        self.cap_refs: list[tuple[str, int, str]] = []
        self.rules: list[Rule] = []
        self.rule_lines: dict[str, str] = {}
        self.categories: set[str] = set()
        self.paths: set[str] = set()

    def add_file(self, file: str, text: str) -> None:
        _check_file_size(file, len(text))
        doc = load_yaml(text, file)
        if doc is None:
            return
        fail = _Fail(file)
        if not isinstance(doc, LineDict):
            raise fail(1, "a rule file must be a mapping with keys categories, caps, rules")
        _no_unknown_keys(doc, _FILE_KEYS, "rule file", fail)
        for name, line in _items(doc, "categories", fail):
            self.categories.add(_name(name, line, "category", fail))
        for spec, line in _items(doc, "caps", fail):
            cap = self._cap(spec, line, fail)
            if cap.name in self.caps:
                raise fail(line, f"duplicate cap name {cap.name!r}")
            self.caps[cap.name] = cap
        for spec, line in _items(doc, "rules", fail):
            self._rule(file, spec, line, fail)

    def _cap(self, spec: Any, line: int, fail: _Fail) -> CapSpec:
        spec = _mapping(spec, line, "cap", fail)
        _no_unknown_keys(spec, _CAP_KEYS, "cap", fail)
        name = _name(_required(spec, "name", fail), spec.line_of("name"), "cap name", fail)
        limit = spec.get("limit")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise fail(spec.line_of("limit"), f"cap {name!r}: limit must be a positive integer")
        window_s = parse_duration(_required(spec, "window", fail), spec.line_of("window"), fail)
        scope = spec.get("scope", "user")
        if scope not in ("user", "global"):
            raise fail(spec.line_of("scope"), f"cap {name!r}: scope must be user or global")
        channel = spec.get("channel")
        if channel is not None:
            channel = _channels([channel], spec.line_of("channel"), fail)[0]
        return CapSpec(name, limit, window_s, scope, channel)

    def _rule(self, file: str, spec: Any, line: int, fail: _Fail) -> None:
        if len(self.rules) == MAX_RULES:
            raise fail(line, f"more than {MAX_RULES:,} rules in the rules directory")
        spec = _mapping(spec, line, "rule", fail)
        _no_unknown_keys(spec, _RULE_KEYS, "rule", fail)
        name = _name(_required(spec, "name", fail), spec.line_of("name"), "rule name", fail)
        if name in self.rule_lines:
            raise fail(
                spec.line_of("name"), f"duplicate rule name {name!r} (first in {self.rule_lines[name]})"
            )
        self.rule_lines[name] = f"{file}:{spec.line_of('name')}"
        priority = spec.get("priority", DEFAULT_PRIORITY)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
            raise fail(
                spec.line_of("priority"), f"rule {name!r}: priority must be an integer 0..{MAX_PRIORITY}"
            )
        when = normalize_condition(_required(spec, "when", fail), spec.line_of("when"), fail, self.paths)
        then = _mapping(_required(spec, "then", fail), spec.line_of("then"), "then", fail)
        effects = self._effects(then, fail)
        shadow = spec.get("shadow", False)
        if not isinstance(shadow, bool):
            raise fail(spec.line_of("shadow"), f"rule {name!r}: shadow must be true or false")
        self.rules.append(Rule(name, priority, when, effects, file, spec.line, shadow))

    def _effects(self, then: LineDict, fail: _Fail) -> Effects:
        unknown = sorted(set(then) - EFFECT_NAMES)
        if unknown:
            key = unknown[0]
            raise fail(then.line_of(key), f"unknown effect {key!r}; known: {', '.join(sorted(EFFECT_NAMES))}")
        values: dict[str, Any] = {}
        for key in _CHANNEL_LIST_EFFECTS:
            if key in then:
                values[key] = tuple(_channels(then[key], then.line_of(key), fail))
        for key in _BOOL_EFFECTS:
            if key in then:
                if not isinstance(then[key], bool):
                    raise fail(then.line_of(key), f"{key} must be true or false")
                values[key] = then[key]
        if "caps" in then:
            names = then["caps"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise fail(then.line_of("caps"), "caps must be a list of cap names")
            values["caps"] = tuple(names)
            self.cap_refs.extend((fail.file, then.line_of("caps"), n) for n in names)
        if "on_cap" in then:
            if then["on_cap"] not in get_args(OnCap):
                raise fail(then.line_of("on_cap"), f"on_cap must be one of {', '.join(get_args(OnCap))}")
            values["on_cap"] = then["on_cap"]
        if "quiet_hours" in then:
            values["quiet_hours"] = _quiet_hours(then["quiet_hours"], then.line_of("quiet_hours"), fail)
        if "suppress" in then:
            if not isinstance(then["suppress"], str) or not then["suppress"]:
                raise fail(then.line_of("suppress"), "suppress takes a reason string")
            values["suppress"] = then["suppress"]
        if "escalate_after" in then:
            values["escalate_after"] = parse_duration(
                then["escalate_after"], then.line_of("escalate_after"), fail
            )
        return Effects(**values)

    def build(self, version: str, files: tuple[str, ...]) -> Ruleset:
        for file, line, name in self.cap_refs:
            if name not in self.caps:
                known = ", ".join(sorted(self.caps)) or "none declared"
                raise RuleFileError(file, line, f"unknown cap {name!r}; known: {known}")
        if not self.rules:
            raise RuleFileError(files[0] if files else "", 0, "the rules directory declares no rules")
        ordered = sorted(enumerate(self.rules), key=lambda pair: (pair[1].priority, pair[0]))
        return Ruleset(
            version=version,
            rules=tuple(rule for _, rule in ordered),
            caps=dict(self.caps),
            categories=frozenset(self.categories),
            files=files,
            referenced_paths=frozenset(self.paths),
        )


class _Fail:
    """Makes `RuleFileError`s for one file: `fail(line, problem)`."""

    def __init__(self, file: str) -> None:
        self.file = file

    def __call__(self, line: int, problem: str) -> RuleFileError:
        return RuleFileError(self.file, line, problem)


def parse_duration(value: Any, line: int, fail: _Fail) -> float:
    """`"90s"`, `"15m"`, `"1h"`, `"1d"`, `"1w"`, `"250ms"` or a positive number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise fail(line, f"invalid duration {value!r}; use e.g. 90s, 15m, 1h, 1d")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise fail(line, f"duration must be positive and finite, got {value!r}")
    return seconds


def _quiet_hours(value: Any, line: int, fail: _Fail) -> QuietHours:
    spec = _mapping(value, line, "quiet_hours", fail)
    _no_unknown_keys(spec, frozenset({"from", "to", "policy"}), "quiet_hours", fail)
    start = _clock(_required(spec, "from", fail), spec.line_of("from"), fail)
    end = _clock(_required(spec, "to", fail), spec.line_of("to"), fail)
    if start == end:
        raise fail(spec.line_of("to"), "quiet_hours from and to must differ")
    policy = spec.get("policy", "defer")
    if policy not in get_args(QuietPolicy):
        raise fail(
            spec.line_of("policy"), f"quiet_hours policy must be one of {', '.join(get_args(QuietPolicy))}"
        )
    return QuietHours(start, end, policy)


def _clock(value: Any, line: int, fail: _Fail) -> time:
    match = _CLOCK.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise fail(line, f"invalid clock time {value!r}; use HH:MM (24 h), quoted")
    return time(int(match.group(1)), int(match.group(2)))


def _channels(value: Any, line: int, fail: _Fail) -> list[str]:
    if not isinstance(value, list):
        raise fail(line, f"expected a list of channels, got {value!r}")
    for channel in value:
        if channel not in KNOWN_CHANNELS:
            raise fail(line, f"unknown channel {channel!r}; known: {', '.join(KNOWN_CHANNELS)}")
    return list(value)


def _items(doc: LineDict, key: str, fail: _Fail) -> list[tuple[Any, int]]:
    if key not in doc or doc[key] is None:
        return []
    value = doc[key]
    if not isinstance(value, list):
        raise fail(doc.line_of(key), f"{key} must be a list")
    lines = getattr(value, "item_lines", [doc.line_of(key)] * len(value))
    return list(zip(value, lines, strict=True))


def _mapping(value: Any, line: int, what: str, fail: _Fail) -> LineDict:
    if not isinstance(value, LineDict):
        raise fail(line, f"{what} must be a mapping, got {value!r}")
    return value


def _required(spec: LineDict, key: str, fail: _Fail) -> Any:
    if key not in spec or spec[key] is None:
        raise fail(spec.line, f"missing required key {key!r}")
    return spec[key]


def _no_unknown_keys(spec: LineDict, allowed: frozenset[str], what: str, fail: _Fail) -> None:
    for key in spec:
        if key not in allowed:
            raise fail(
                spec.line_of(key), f"unknown key {key!r} in {what}; allowed: {', '.join(sorted(allowed))}"
            )


def _name(value: Any, line: int, what: str, fail: _Fail) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise fail(line, f"invalid {what} {value!r}: letters, digits, _ . - (start with a letter)")
    return value
