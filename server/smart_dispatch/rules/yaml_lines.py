"""YAML loading that remembers where things are, so every error can say `file:line`."""

from __future__ import annotations

from typing import Any

import yaml

from smart_dispatch.errors import RuleFileError


class LineDict(dict[str, Any]):
    """A mapping from a YAML file that knows its own line and the line of each key (1-based)."""

    line: int
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    line: int
    item_lines: list[int]


def _loader_for(file: str) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineDict:
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

    def construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> LineList:
        result = LineList(loader.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, construct_sequence)
    return Loader


def load_yaml(text: str, file: str) -> Any:
    """Parse one YAML document; syntax errors become `RuleFileError` with the line."""
    try:
        return yaml.load(text, Loader=_loader_for(file))  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise RuleFileError(file, line, f"invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise RuleFileError(file, 0, f"invalid YAML: {exc}") from exc
