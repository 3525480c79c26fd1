"""A safe YAML reader that keeps line numbers and rejects duplicate keys (TR §4.2).

`load(text, first_line)` returns the plain Python value (dicts, lists, scalars from PyYAML's
safe constructors), the 1-based file line of every key path, the raw text of every scalar
(so a validator can say "`yes` is a YAML boolean") and the problems found. It never raises
for bad input: a syntax error or a duplicate key becomes a `YamlProblem`.
"""

from __future__ import annotations

from typing import Any

import attrs
import yaml

Path = tuple[str | int, ...]
"""A key path: mapping keys and list indexes from the document root."""


@attrs.frozen
class YamlProblem:
    """A YAML-level problem at a 1-based file line."""

    line: int
    path: Path
    message: str


@attrs.frozen
class YamlDoc:
    """A parsed document with the file line and raw text of each path."""

    value: Any
    lines: dict[Path, int]
    raw: dict[Path, str]
    problems: tuple[YamlProblem, ...]


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, first_line: int) -> None:
        self.loader = loader
        self.first_line = first_line
        self.lines: dict[Path, int] = {}
        self.raw: dict[Path, str] = {}
        self.problems: list[YamlProblem] = []

    def line(self, node: yaml.Node) -> int:
        return int(node.start_mark.line) + self.first_line

    def walk(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, self.line(node))
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.scalar(key_node, path, record=False)
                if not isinstance(key, str | int | float | bool) or key is None:
                    self.problems.append(
                        YamlProblem(self.line(key_node), path, "mapping keys must be plain text")
                    )
                    continue
                key_text = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
                child: Path = (*path, key_text)
                if key in out:
                    self.problems.append(
                        YamlProblem(
                            self.line(key_node),
                            child,
                            f"duplicate key {key_text!r} (first on line {self.lines[child]})",
                        )
                    )
                    continue
                self.lines[child] = self.line(key_node)
                out[key] = self.walk(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def scalar(self, node: yaml.Node, path: Path, *, record: bool = True) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return None
        if record:
            self.raw.setdefault(path, str(node.value))
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.problems.append(YamlProblem(self.line(node), path, f"bad YAML value: {exc}"))
            return None


def load(text: str, first_line: int = 1) -> YamlDoc:
    """Parse one YAML document; `first_line` is the file line of the text's first line."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = (int(mark.line) + first_line) if mark is not None else first_line
            message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
            return YamlDoc(None, {}, {}, (YamlProblem(line, (), f"invalid YAML: {message}"),))
        except yaml.YAMLError as exc:
            return YamlDoc(None, {}, {}, (YamlProblem(first_line, (), f"invalid YAML: {exc}"),))
        if node is None:
            return YamlDoc(None, {}, {}, ())
        walker = _Walker(loader, first_line)
        value = walker.walk(node, ())
        return YamlDoc(value, walker.lines, walker.raw, tuple(walker.problems))
    finally:
        loader.dispose()
