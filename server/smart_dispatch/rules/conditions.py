"""Validation and normalisation of `when` conditions before durable-rules sees them.

durable-rules accepts some broken conditions silently (bad regexes, literals of the wrong type,
unknown roots) and coerces literals loosely, so the loader checks them here and reports
`file:line`. The accepted grammar (a subset of durable-rules' JSON conditions):

    condition := {path: literal}                          equality
               | {$eq|$neq: {path: literal}}
               | {$lt|$lte|$gt|$gte: {path: number}}
               | {$ex|$nex: {path: 1}}                    present / absent
               | {$mt: {path: "regex"}}                   full match, durable-rules dialect:
                                                            %d %a %w %s %l %u classes, no \\
               | {$and|$or: [condition, ...]}
               | {k1: v1, k2: v2, ...}                     shorthand for $and of each pair

`path` is dotted (`user.vip`) and must start with a root of the facts document.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from smart_dispatch.rules.yaml_lines import LineDict

FACT_ROOTS: frozenset[str] = frozenset(
    {"category", "message", "labels", "user", "reachable", "behaviour", "preferences"}
)
_COMPARE = frozenset({"$lt", "$lte", "$gt", "$gte"})
_EQUALITY = frozenset({"$eq", "$neq"})
_PRESENCE = frozenset({"$ex", "$nex"})
_LOGICAL = frozenset({"$and", "$or"})
OPERATORS = _COMPARE | _EQUALITY | _PRESENCE | _LOGICAL | {"$mt"}

Fail = Callable[[int, str], Exception]


def normalize_condition(cond: Any, line: int, fail: Fail, paths: set[str]) -> dict[str, Any]:
    """Return `cond` as a durable-rules condition; add every referenced path to `paths`.
    Raises what `fail(line, problem)` returns on the first problem."""
    if not isinstance(cond, Mapping):
        raise fail(line, f"a condition must be a mapping, got {type(cond).__name__}")
    line = cond.line if isinstance(cond, LineDict) else line
    if not cond:
        return {}
    if len(cond) > 1:
        parts = [normalize_condition({k: v}, _line_of(cond, k, line), fail, paths) for k, v in cond.items()]
        return {"$and": parts}
    ((key, value),) = cond.items()
    line = _line_of(cond, key, line)
    if not key.startswith("$"):
        _check_path(key, line, fail, paths)
        _check_literal(value, key, line, fail)
        return {key: value}
    if key not in OPERATORS:
        raise fail(line, f"unknown operator {key!r}; known: {', '.join(sorted(OPERATORS))}")
    if key in _LOGICAL:
        if not isinstance(value, list) or not value:
            raise fail(line, f"{key} takes a non-empty list of conditions")
        return {key: [normalize_condition(item, line, fail, paths) for item in value]}
    if not isinstance(value, Mapping) or len(value) != 1:
        raise fail(line, f"{key} takes exactly one {{path: value}} pair")
    ((path, literal),) = value.items()
    _check_path(path, line, fail, paths)
    if key in _COMPARE and (isinstance(literal, bool) or not isinstance(literal, int | float)):
        raise fail(line, f"{key} on {path!r} needs a number, got {literal!r}")
    if key in _EQUALITY:
        _check_literal(literal, path, line, fail)
    if key in _PRESENCE:
        literal = 1
    if key == "$mt":
        if not isinstance(literal, str):
            raise fail(line, f"$mt on {path!r} needs a regex string, got {literal!r}")
        if "\\" in literal:
            raise fail(
                line,
                f"$mt on {path!r}: durable-rules regexes have no backslash escapes; use its classes "
                "%d (digit), %a (letter), %w (alphanumeric), %s (space), %l/%u (lower/upper case)",
            )
        try:
            re.compile(literal.replace("%", ""))
        except re.error as exc:
            raise fail(line, f"$mt on {path!r}: invalid regex {literal!r}: {exc}") from exc
    return {key: {path: literal}}


def _line_of(cond: Mapping[str, Any], key: str, default: int) -> int:
    return cond.line_of(key) if isinstance(cond, LineDict) else default


def _check_path(path: Any, line: int, fail: Fail, paths: set[str]) -> None:
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise fail(line, f"invalid fact path {path!r}")
    root = path.split(".", 1)[0]
    if root not in FACT_ROOTS:
        raise fail(line, f"unknown fact {path!r}; facts start with one of: {', '.join(sorted(FACT_ROOTS))}")
    paths.add(path)


def _check_literal(value: Any, path: str, line: int, fail: Fail) -> None:
    if not isinstance(value, str | int | float | bool):
        raise fail(line, f"{path!r} must be compared with a string, number or boolean, got {value!r}")
