"""YAML loading that remembers where things are, so every error can say `file:line`.

Rule files come from operators and ConfigMaps, so loading is bounded: a document nested deeper
than `MAX_DEPTH` or expanding (through aliases) to more than `MAX_VALUES` values is refused
before anything is built from it. (Ten nested `{$or: [*prev, ×10]}` anchors make 10^10 values
out of a few hundred bytes.) libyaml does the parsing.
"""

from __future__ import annotations

from typing import Any

import yaml

from smart_dispatch.errors import RuleFileError

#: Nesting levels of mappings and lists in one rule file.
MAX_DEPTH = 64
#: Values one rule file may expand to, aliases expanded (a value is a scalar, list or mapping).
MAX_VALUES = 250_000


class LineDict(dict[str, Any]):
    """A mapping from a YAML file that knows its own line and the line of each key (1-based)."""

    line: int
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    line: int
    item_lines: list[int]


def _loader_for(file: str) -> type[yaml.CSafeLoader]:
    class Loader(yaml.CSafeLoader):
        pass

    def construct_mapping(loader: yaml.CSafeLoader, node: yaml.MappingNode) -> LineDict:
        loader.flatten_mapping(node)
        result = LineDict()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise RuleFileError(file, line, f"keys must be strings, got {key!r}")
            if key in result:
                raise RuleFileError(file, line, f"duplicate key {key!r}")
            result[key] = loader.construct_object(value_node, deep=True)
            result.key_lines[key] = line
        return result

    def construct_sequence(loader: yaml.CSafeLoader, node: yaml.SequenceNode) -> LineList:
        result = LineList(loader.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, construct_sequence)
    return Loader


def load_yaml(text: str, file: str) -> Any:
    """Parse one YAML document; syntax errors and documents over the bounds become
    `RuleFileError` with the line."""
    loader = _loader_for(file)(text)  # a CSafeLoader subclass
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_bounds(node, file)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        exc = _python_parser_error(text) or exc
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise RuleFileError(file, line, f"invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise RuleFileError(file, 0, f"invalid YAML: {exc}") from exc
    finally:
        loader.dispose()


def _python_parser_error(text: str) -> yaml.MarkedYAMLError | None:
    """The pure-Python parser's error for `text`, which names the offending character or alias
    where libyaml does not (only composed: nothing is built, so no alias is expanded)."""
    try:
        yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        return exc
    except (yaml.YAMLError, RecursionError):
        return None
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_bounds(root: yaml.Node, file: str) -> None:
    """Refuse a node graph nested deeper than `MAX_DEPTH` (recursive aliases included) or whose
    expansion has more than `MAX_VALUES` values. Linear in the size of the text: each node is
    sized once, however often aliases repeat it."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_sized = stack.pop()
        if children_sized:
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_VALUES:
                raise RuleFileError(
                    file,
                    node.start_mark.line + 1,
                    f"this value expands to more than {MAX_VALUES:,} values (through YAML aliases); "
                    "a rule file may hold at most that many",
                )
            sizes[id(node)] = size
            continue
        if id(node) in sizes:
            continue
        if depth > MAX_DEPTH:
            raise RuleFileError(
                file,
                node.start_mark.line + 1,
                f"nested deeper than {MAX_DEPTH} levels (or a recursive alias)",
            )
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node) if id(child) not in sizes)
