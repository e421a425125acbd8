"""Loading a rules directory: every `*.yaml` / `*.yml` file, validated, as one `Ruleset`.

A file (all keys optional):

    categories:                           message categories these rules cover; a required
      - {name: otp, required: true}       one cannot be opted out of nor muted (preferences)
      - marketing
    caps:                                 frequency caps rules may apply
      - {name: marketing_hourly, limit: 1, window: 1h, scope: user, channel: sms}
    rules:
      - name: otp_now
        priority: 10                      lower fires first (0..65535, default 100)
        shadow: false                     true: evaluate and report, do not enforce
        when: {category: otp}             durable-rules condition (see conditions.py)
        then: {prefer: [sms], fallback: [email], bypass_caps: true, bypass_quiet_hours: true}
    channels:                             what a message costs per channel (learned choice)
      sms: {cost: 0.05}
    learning:                             the engagement model (at most one file sets it)
      half_life: 30d                      how fast what was learned fades
      prior_weight: 10                    observations the population prior is worth
      values: {marketing: 1.0}            what one engagement of a category is worth
      segment_by: plan                    a recipient attribute that splits the prior (optional)

Every problem raises `RuleFileError(file, line, problem)`; nothing is half-loaded. A file may
have at most `MAX_FILE_BYTES` bytes, a directory at most `MAX_FILES` files, `MAX_TOTAL_BYTES`
bytes and `MAX_RULES` rules (see also the
bounds of yaml_lines.py and network.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from smart_dispatch.counters.base import CapSpec
from smart_dispatch.errors import RuleFileError
from smart_dispatch.rules.conditions import normalize_condition
from smart_dispatch.rules.effects import (
    EFFECT_NAMES,
    EFFECTS,
    mapping,
    no_unknown_keys,
    parse_channels,
    parse_duration,
    required,
)
from smart_dispatch.rules.model import DEFAULT_CHANNEL_COSTS, Effects, Learning, Rule, Ruleset
from smart_dispatch.rules.yaml_lines import LineDict, load_yaml

DEFAULT_PRIORITY = 100
#: Bytes of one rule file (checked before it is read).
MAX_FILE_BYTES = 2 * 1024 * 1024
#: Rules of one rules directory.
MAX_RULES = 10_000
#: Rule files of one directory, and their bytes together (checked before any is read).
MAX_FILES = 1_000
MAX_TOTAL_BYTES = 16 * 1024 * 1024
MAX_PRIORITY = 65535
_FILE_KEYS = frozenset({"categories", "caps", "rules", "channels", "learning"})
_CAP_KEYS = frozenset({"name", "limit", "window", "scope", "channel", "description"})
_CATEGORY_KEYS = frozenset({"name", "required", "description"})
_RULE_KEYS = frozenset({"name", "priority", "when", "then", "shadow", "description"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_ATTRIBUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


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
        if len(files) > MAX_FILES:
            raise RuleFileError(str(directory), 0, f"{len(files):,} rule files; at most {MAX_FILES:,}")
        total = 0
        for path in files:
            size = path.stat().st_size
            _check_file_size(str(path), size)
            total += size
        if total > MAX_TOTAL_BYTES:
            problem = f"the rule files hold {total:,} bytes; a directory may hold at most {MAX_TOTAL_BYTES:,}"
            raise RuleFileError(str(directory), 0, problem)
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
        self.required_categories: set[str] = set()
        self.paths: set[str] = set()
        self.costs: dict[str, float] = dict(DEFAULT_CHANNEL_COSTS)
        self.costs_set: dict[str, str] = {}  # channel -> file:line that set its cost
        self.learning: Learning | None = None
        self.learning_at = ""

    def add_file(self, file: str, text: str) -> None:
        _check_file_size(file, len(text))
        doc = load_yaml(text, file)
        if doc is None:
            return
        fail = _Fail(file)
        if not isinstance(doc, LineDict):
            raise fail(1, "a rule file must be a mapping with keys categories, caps, rules")
        no_unknown_keys(doc, _FILE_KEYS, "rule file", fail)
        for entry, line in _items(doc, "categories", fail):
            self._category(entry, line, fail)
        for spec, line in _items(doc, "caps", fail):
            cap = self._cap(spec, line, fail)
            if cap.name in self.caps:
                raise fail(line, f"duplicate cap name {cap.name!r}")
            self.caps[cap.name] = cap
        for spec, line in _items(doc, "rules", fail):
            self._rule(file, spec, line, fail)
        if doc.get("channels") is not None:
            self._channel_costs(mapping(doc["channels"], doc.line_of("channels"), "channels", fail), fail)
        if doc.get("learning") is not None:
            if self.learning is not None:
                raise fail(doc.line_of("learning"), f"learning is set already (in {self.learning_at})")
            self.learning_at = f"{file}:{doc.line_of('learning')}"
            self.learning = _learning(
                mapping(doc["learning"], doc.line_of("learning"), "learning", fail), fail
            )

    def _category(self, entry: Any, line: int, fail: _Fail) -> None:
        """A category: its name, or `{name, required, description}` (required: nobody may opt
        out of it nor mute it; declared required in any file, it is required)."""
        if not isinstance(entry, LineDict):
            self.categories.add(_name(entry, line, "category", fail))
            return
        no_unknown_keys(entry, _CATEGORY_KEYS, "category", fail)
        name = _name(required(entry, "name", fail), entry.line_of("name"), "category", fail)
        flag = entry.get("required", False)
        if not isinstance(flag, bool):
            raise fail(entry.line_of("required"), f"category {name!r}: required must be true or false")
        self.categories.add(name)
        if flag:
            self.required_categories.add(name)

    def _channel_costs(self, spec: LineDict, fail: _Fail) -> None:
        for channel in spec:
            line = spec.line_of(channel)
            parse_channels([channel], line, fail)
            if channel in self.costs_set:
                raise fail(line, f"the cost of {channel!r} is set already (in {self.costs_set[channel]})")
            entry = mapping(spec[channel], line, f"channels.{channel}", fail)
            no_unknown_keys(entry, frozenset({"cost"}), f"channels.{channel}", fail)
            cost = entry.get("cost")
            if isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 <= cost < 1e6:
                raise fail(entry.line_of("cost"), f"channels.{channel}.cost must be a number >= 0")
            self.costs[channel] = float(cost)
            self.costs_set[channel] = f"{fail.file}:{line}"

    def _cap(self, spec: Any, line: int, fail: _Fail) -> CapSpec:
        spec = mapping(spec, line, "cap", fail)
        no_unknown_keys(spec, _CAP_KEYS, "cap", fail)
        name = _name(required(spec, "name", fail), spec.line_of("name"), "cap name", fail)
        limit = spec.get("limit")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise fail(spec.line_of("limit"), f"cap {name!r}: limit must be a positive integer")
        window_s = parse_duration(required(spec, "window", fail), spec.line_of("window"), fail)
        scope = spec.get("scope", "user")
        if scope not in ("user", "global"):
            raise fail(spec.line_of("scope"), f"cap {name!r}: scope must be user or global")
        channel = spec.get("channel")
        if channel is not None:
            channel = parse_channels([channel], spec.line_of("channel"), fail)[0]
        return CapSpec(name, limit, window_s, scope, channel)

    def _rule(self, file: str, spec: Any, line: int, fail: _Fail) -> None:
        if len(self.rules) == MAX_RULES:
            raise fail(line, f"more than {MAX_RULES:,} rules in the rules directory")
        spec = mapping(spec, line, "rule", fail)
        no_unknown_keys(spec, _RULE_KEYS, "rule", fail)
        name = _name(required(spec, "name", fail), spec.line_of("name"), "rule name", fail)
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
        when = normalize_condition(required(spec, "when", fail), spec.line_of("when"), fail, self.paths)
        then = mapping(required(spec, "then", fail), spec.line_of("then"), "then", fail)
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
        context = _EffectContext(fail, self.cap_refs)
        values = {
            effect.name: effect.parse(then[effect.name], then.line_of(effect.name), context)
            for effect in EFFECTS
            if effect.name in then
        }
        return Effects(**values)

    def build(self, version: str, files: tuple[str, ...]) -> Ruleset:
        for file, line, name in self.cap_refs:
            if name not in self.caps:
                known = ", ".join(sorted(self.caps)) or "none declared"
                raise RuleFileError(file, line, f"unknown cap {name!r}; known: {known}")
        if not self.rules:
            raise RuleFileError(files[0] if files else "", 0, "the rules directory declares no rules")
        ordered = sorted(enumerate(self.rules), key=lambda pair: (pair[1].priority, pair[0]))
        learning = self.learning or Learning()
        return Ruleset(
            version=version,
            rules=tuple(rule for _, rule in ordered),
            caps=dict(self.caps),
            categories=frozenset(self.categories),
            required_categories=frozenset(self.required_categories),
            files=files,
            referenced_paths=frozenset(self.paths),
            learning=replace(learning, costs=dict(self.costs)),
        )


class _EffectContext:
    def __init__(self, fail: _Fail, cap_refs: list[tuple[str, int, str]]) -> None:
        self.fail = fail
        self._cap_refs = cap_refs

    def cap_reference(self, line: int, name: str) -> None:
        self._cap_refs.append((self.fail.file, line, name))


class _Fail:
    """Makes `RuleFileError`s for one file: `fail(line, problem)`."""

    def __init__(self, file: str) -> None:
        self.file = file

    def __call__(self, line: int, problem: str) -> RuleFileError:
        return RuleFileError(self.file, line, problem)


def _learning(spec: LineDict, fail: _Fail) -> Learning:
    no_unknown_keys(spec, frozenset({"half_life", "prior_weight", "values", "segment_by"}), "learning", fail)
    default = Learning()
    half_life = default.half_life_s
    if "half_life" in spec:
        half_life = parse_duration(spec["half_life"], spec.line_of("half_life"), fail)
    weight = spec.get("prior_weight", default.prior_weight)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1e6:
        raise fail(spec.line_of("prior_weight"), "learning.prior_weight must be a positive number")
    values: dict[str, float] = {}
    if spec.get("values") is not None:
        given = mapping(spec["values"], spec.line_of("values"), "learning.values", fail)
        for category, value in given.items():
            line = given.line_of(category)
            _name(category, line, "category", fail)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
                raise fail(line, f"learning.values.{category} must be a number >= 0")
            values[category] = float(value)
    segment_by = spec.get("segment_by", "")
    if not isinstance(segment_by, str) or (segment_by and not _ATTRIBUTE.fullmatch(segment_by)):
        raise fail(
            spec.line_of("segment_by"),
            "learning.segment_by must be a recipient attribute name (letters, digits, _ . -; at most 64)",
        )
    return Learning(half_life, float(weight), values, segment_by=segment_by)


def _items(doc: LineDict, key: str, fail: _Fail) -> list[tuple[Any, int]]:
    if key not in doc or doc[key] is None:
        return []
    value = doc[key]
    if not isinstance(value, list):
        raise fail(doc.line_of(key), f"{key} must be a list")
    lines = getattr(value, "item_lines", [doc.line_of(key)] * len(value))
    return list(zip(value, lines, strict=True))


def _name(value: Any, line: int, what: str, fail: _Fail) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise fail(line, f"invalid {what} {value!r}: letters, digits, _ . - (start with a letter)")
    return value
