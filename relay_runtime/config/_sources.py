"""Where a value comes from: the sources in precedence order, reading the config file and
``relay.env`` within limits, and resolving one variable to its parsed value."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import yaml

from protocol._urls import redact_url
from relay_runtime.config._values import (
    HIDDEN,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    MAX_ENV_FILE_BYTES,
    ConfigError,
    _Invalid,
)
from relay_runtime.config._vars import _Var


@attrs.frozen
class _Sources:
    args: Mapping[str, object]
    env: Mapping[str, str]
    dotenv: Mapping[str, str]
    dotenv_label: str
    file: Mapping[str, Any]
    file_label: str


def _display(raw: object, *, secret: bool) -> str:
    if secret:
        return HIDDEN
    text = repr(redact_url(raw) if isinstance(raw, str) and "@" in raw else raw)
    return text if len(text) <= 80 else text[:77] + "..."


def _parse(
    parse: Callable[[object, str], Any], raw: object, label: str, *, secret: bool = False
) -> Any:
    try:
        return parse(raw, label)
    except _Invalid as exc:
        raise ConfigError(label, f"{exc} (value {_display(raw, secret=secret)})") from None


def _is_unset(raw: object) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def _file_values(var: _Var, sources: _Sources) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for key in var.keys:
        node: object = sources.file
        for part in key:
            if not isinstance(node, Mapping):
                node = None
                break
            node = node.get(part)
        if not _is_unset(node):
            found.append((f"{'.'.join(key)} in {sources.file_label}", node))
    return found


def _label_of(var: _Var, sources: _Sources) -> str | None:
    """The name of the source that supplies ``var`` (for messages), if any does."""
    if not _is_unset(sources.args.get(var.field)):
        return "--" + var.field.replace("_", "-")
    if var.env is not None and not _is_unset(sources.env.get(var.env)):
        return var.env
    if var.env is not None and not _is_unset(sources.dotenv.get(var.env)):
        return f"{var.env} in {sources.dotenv_label}"
    found = _file_values(var, sources)
    return found[0][0] if found else None


def _resolve(var: _Var, sources: _Sources) -> Any:
    """The parsed value of ``var`` from the highest-precedence source that sets it."""
    raw = sources.args.get(var.field)
    if not _is_unset(raw):
        return _parse(var.parse, raw, "--" + var.field.replace("_", "-"), secret=var.secret)
    if var.env is not None:
        for layer, label in ((sources.env, var.env), (sources.dotenv, None)):
            text = layer.get(var.env)
            if not _is_unset(text):
                name = label or f"{var.env} in {sources.dotenv_label}"
                return _parse(var.parse, text, name, secret=var.secret)
    found = [
        (label, _parse(var.parse, raw, label, secret=var.secret))
        for label, raw in _file_values(var, sources)
    ]
    found = [(label, value) for label, value in found if value is not None]
    if not found:
        return None
    if var.field == "enabled":
        # platforms.relay.enabled: false vetoes, whichever spelling says it.
        return all(value for _, value in found)
    if len(found) > 1 and found[0][1] != found[1][1]:
        raise ConfigError(
            f"{found[0][0]} / {found[1][0]}",
            f"the two spellings differ ({_display(found[0][1], secret=var.secret)} vs "
            f"{_display(found[1][1], secret=var.secret)}); keep one",
        )
    return found[0][1]


def _read_limited(path: Path, limit: int, label: str, what: str) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``; anything else is a ConfigError.

    Opened non-blocking (a FIFO must not hang start-up) and checked with ``fstat`` on the
    open descriptor: a device such as ``/dev/zero``, a pipe or a directory is refused
    before a byte is read, and a file over ``limit`` is refused after reading ``limit + 1``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(label, f"cannot read {what} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a device, pipe or socket"
            raise ConfigError(label, f"{what} is {kind}, not a regular file")
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise ConfigError(label, f"cannot read {what} ({exc.strerror})") from None
    if len(data) > limit:
        raise ConfigError(label, f"{what} is larger than {limit} bytes; refusing to read it")
    return data


def _yaml_depth_problem(text: str) -> str | None:
    """Why ``text`` nests too deeply for the loader, from the (iterative) event parser."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_CONFIG_DEPTH:
                mark = event.start_mark
                where = "" if mark is None else f" at line {mark.line + 1}"
                return f"the config file nests deeper than {MAX_CONFIG_DEPTH} levels{where}"
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _read_config_file(path: Path) -> Mapping[str, Any]:
    label = os.fspath(path)
    raw = _read_limited(path, MAX_CONFIG_BYTES, label, "the config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(label, "the config file is not UTF-8 text") from None
    try:
        problem = _yaml_depth_problem(text)
        if problem is not None:
            raise ConfigError(label, problem)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None)
        what = f": {problem}" if problem else ""
        context = getattr(exc, "context", None)
        if problem and context:
            what += f" ({context})"
        raise ConfigError(label, f"the config file is not valid YAML{where}{what}") from None
    except RecursionError:  # defence in depth: the depth check above should prevent it
        raise ConfigError(label, "the config file nests too deeply") from None
    if data is None:
        return MappingProxyType({})
    if not isinstance(data, dict):
        raise ConfigError(label, "the config file must hold a YAML mapping")
    return MappingProxyType(data)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``relay.env`` file (blank lines and ``#`` comments skipped).

    At most :data:`MAX_ENV_FILE_BYTES`, a regular file, UTF-8; else :class:`ConfigError`.
    """
    label = os.fspath(path)
    raw = _read_limited(path, MAX_ENV_FILE_BYTES, label, "relay.env")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(label, "relay.env is not UTF-8 text") from None
    out: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "=" not in stripped:
            continue
        key, _, value = stripped.partition("=")
        out[key.strip()] = value.strip()
    return out
