"""Collecting policy problems with their file line and key path (shared by both formats)."""

from __future__ import annotations

from collections.abc import Mapping

from trust import _yaml
from trust._policy_rules import PolicyProblem, PolicyWarning

_BOOL_HINT = "YAML reads {raw!r} as a boolean; yes/no/on/off/true/false need quotes"


def _key_text(path: _yaml.Path) -> str:
    if not path:
        return "<frontmatter>"
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class Checker:
    """Collects problems with their file line and key path."""

    def __init__(self, source: str, lines: Mapping[_yaml.Path, int], raw: Mapping[_yaml.Path, str]):
        self.source = source
        self.lines = lines
        self.raw = raw
        self.errors: list[PolicyProblem] = []
        self.warnings: list[PolicyWarning] = []

    def line(self, path: _yaml.Path) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def error(self, path: _yaml.Path, message: str, *, line: int | None = None) -> None:
        where = self.line(path) if line is None else line
        self.errors.append(PolicyProblem(self.source, where, _key_text(path), message))

    def warn(self, path: _yaml.Path, message: str) -> None:
        self.warnings.append(PolicyWarning(self.source, self.line(path), _key_text(path), message))

    def hint(self, path: _yaml.Path, value: object) -> str:
        if isinstance(value, bool):
            return "; " + _BOOL_HINT.format(raw=self.raw.get(path, str(value).lower()))
        return ""


def kind_name(value: object) -> str:
    """How a problem names the YAML type of ``value``."""
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, bool):
        return "boolean"
    return type(value).__name__ if not isinstance(value, str) else "string"
