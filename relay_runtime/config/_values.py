"""Configuration values: the constants, :class:`ConfigError`, and the parsers that check and
normalize one raw value each (a bad one raises ``_Invalid``, turned into a ConfigError naming
its source by :mod:`relay_runtime.config._sources`)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import attrs

from protocol._urls import http_url_problem, relay_url_problem

logger = logging.getLogger("relay_runtime.config")

HIDDEN: Final = "<hidden>"
ENV_PREFIX: Final = "GATEWAY_RELAY_"
ENV_FILE_NAME: Final = "relay.env"
MIN_SECRET_LENGTH: Final = 32
HOUR: Final = 3600
#: A config file larger than this is refused unread (a YAML file of settings is a few KiB).
MAX_CONFIG_BYTES: Final = 1024 * 1024
#: ``relay.env`` holds a few ``KEY=VALUE`` lines.
MAX_ENV_FILE_BYTES: Final = 64 * 1024
#: Deepest nesting of mappings and lists accepted in a config file.
MAX_CONFIG_DEPTH: Final = 64
DAY: Final = 86_400

#: The boolean words of RC §10, matched stripped and case-insensitively.
TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})
_PLATFORM_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_INT_RE: Final = re.compile(r"[+-]?[0-9]{1,19}")  # no huge-int parsing


def mask(value: object) -> str:
    """How a secret is shown anywhere a human or a log could see it."""
    return "None" if value is None else HIDDEN


def bool_word(text: str) -> bool | None:
    """The boolean an RC §10 word spells (``1/true/yes/on``, ``0/false/no/off``), else None."""
    token = text.strip().lower()
    if token in TRUE_WORDS:
        return True
    if token in FALSE_WORDS:
        return False
    return None


def _skip(item: object) -> None:
    pass


def string_list(raw: object, *, on_bad_item: Callable[[object], None] = _skip) -> list[str] | None:
    """A list (or tuple) of names, or one comma-separated string, as stripped non-empty text.

    ``None`` when ``raw`` is neither. Numbers count as text; any other item is passed to
    ``on_bad_item`` (which may raise) and skipped.
    """
    if isinstance(raw, str):
        items: list[object] = list(raw.split(","))
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        return None
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            on_bad_item(item)
            continue
        text = str(item).strip()
        if text:
            out.append(text)
    return out


class ConfigError(Exception):
    """A configuration value is missing, malformed or out of range.

    ``name`` is the variable, config key or argument that supplied the value; ``problem``
    says what is wrong with it. Secrets never appear in either.
    """

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


@attrs.frozen
class BotIdEntry:
    """One entry of ``GATEWAY_RELAY_BOT_IDS``: the bot's id on a platform, and its username."""

    bot_id: str
    username: str | None = None


class _Invalid(Exception):
    """A parser's complaint about a value; the caller adds the variable's name."""


# --------------------------------------------------------------------------- value parsers
#
# Each parser turns a raw value (text from the environment, any YAML scalar/list/mapping from
# the config file, or an already-typed value from an argument or the constructor) into the
# field's type, or raises _Invalid. Parsers are idempotent on their own output.


def _text(raw: object) -> str:
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise _Invalid(f"must be text, got {type(raw).__name__}")
    return str(raw).strip()


def _opt_text(raw: object, label: str) -> str | None:
    if raw is None:
        return None
    return _text(raw) or None


def _req_text(raw: object, label: str) -> str:
    if raw is None:
        raise _Invalid("must be set")
    return _text(raw)


def _nonempty_text(raw: object, label: str) -> str:
    value = _req_text(raw, label)
    if not value:
        raise _Invalid("must not be empty")
    return value


def _bool(raw: object, label: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):  # a YAML 1/0 (RC §10 lists them as booleans)
        return raw == 1
    if isinstance(raw, str) and (value := bool_word(raw)) is not None:
        return value
    raise _Invalid("must be a boolean (1/true/yes/on or 0/false/no/off)")


class _Int:
    """An integer setting in ``low..high`` (both included); the range is in every complaint."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high

    @property
    def range_text(self) -> str:
        return f"an integer from {self.low} to {self.high}"

    def __call__(self, raw: object, label: str) -> int:
        if isinstance(raw, bool):
            raise _Invalid(f"must be {self.range_text}, got a boolean")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
            value = int(raw.strip())
        else:
            raise _Invalid(f"must be {self.range_text}")
        if not self.low <= value <= self.high:
            raise _Invalid(f"must be {self.range_text}")
        return value


class _Seconds:
    """A duration setting in seconds, ``low..high`` (both included, finite)."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high

    @property
    def range_text(self) -> str:
        return f"a number of seconds from {self.low:g} to {self.high:g}"

    def __call__(self, raw: object, label: str) -> float:
        if isinstance(raw, bool):
            raise _Invalid(f"must be {self.range_text}, got a boolean")
        if isinstance(raw, int | float):
            value = float(raw)
        elif isinstance(raw, str) and len(raw) <= 64:
            try:
                value = float(raw.strip())
            except ValueError:
                raise _Invalid(f"must be {self.range_text}") from None
        else:
            raise _Invalid(f"must be {self.range_text}")
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise _Invalid(f"must be {self.range_text}")
        return value


def _seconds(raw: object, label: str) -> float:
    """Any finite number of seconds > 0, for a parser that applies a range of its own."""
    try:
        return _POSITIVE_SECONDS(raw, label)
    except _Invalid:
        raise _Invalid("must be a number of seconds > 0") from None


_POSITIVE_SECONDS: Final = _Seconds(math.ulp(0.0), math.inf)


#: Longest turn time limit: a turn outliving the dedupe window's default could be replayed.
MAX_TURN_TIMEOUT_S: Final = 86_400.0


def _turn_timeout(raw: object, label: str) -> float:
    """Seconds in (0, 86400], or 0 for no limit."""
    problem = "must be 0 (no limit) or a number of seconds > 0"
    if isinstance(raw, bool):
        raise _Invalid(f"{problem}, got a boolean")
    if raw == 0 or (isinstance(raw, str) and raw.strip() and _is_zero(raw.strip())):
        return 0.0
    try:
        value = _seconds(raw, label)
    except _Invalid:
        raise _Invalid(problem) from None
    if value > MAX_TURN_TIMEOUT_S:
        raise _Invalid(f"must be at most {MAX_TURN_TIMEOUT_S:g} seconds (0 = no limit)")
    return value


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


def metrics_address(raw: object) -> tuple[str, int] | None:
    """``(host, port)`` of a ``[HOST:]PORT`` metrics address; loopback when only a port is given.

    ``None`` when ``raw`` is unset, ``off`` or ``false``. Raises ``ValueError`` saying what is
    wrong. An IPv6 host is written in brackets (``[::1]:9464``); port 0 takes any free port.
    """
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise ValueError(f"must be [HOST:]PORT, got {type(raw).__name__}")
    text = str(raw).strip()
    if not text or (bool_word(text) is False and not text.isdigit()):
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if not host:
        raise ValueError(f"{text!r}: the host before ':' is empty")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be an integer 0-65535")
    return host, int(port_text)


def _metrics(raw: object, label: str) -> str | None:
    try:
        address = metrics_address(raw)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _platform_name(raw: object, label: str) -> str:
    name = _req_text(raw, label)
    if not _PLATFORM_RE.fullmatch(name):
        raise _Invalid(f"platform {name!r} must match [a-z0-9][a-z0-9_.-]*")
    return name


def _not_text(item: object) -> None:
    raise _Invalid(f"must be text, got {type(item).__name__}")


def _string_list(raw: object) -> list[str]:
    out = string_list(raw, on_bad_item=_not_text)
    if out is None:
        raise _Invalid("must be a comma-separated string or a list")
    return out


def _platform_list(raw: object, label: str) -> tuple[str, ...]:
    names = _string_list(raw)
    seen: set[str] = set()
    for name in names:
        _platform_name(name, label)
        if name in seen:
            raise _Invalid(f"platform {name!r} is listed twice")
        seen.add(name)
    return tuple(names)


def _route_keys(raw: object, label: str) -> tuple[str, ...]:
    return tuple(_string_list(raw))


def _relay_url(raw: object, label: str) -> str | None:
    url = _opt_text(raw, label)
    if url is None:
        return None
    problem = relay_url_problem(url)
    if problem is not None:
        raise _Invalid(problem)
    return url.rstrip("/")


def _http_url(*, strip_slash: bool) -> Callable[[object, str], str | None]:
    def parse(raw: object, label: str) -> str | None:
        url = _opt_text(raw, label)
        if url is None:
            return None
        problem = http_url_problem(url)
        if problem is not None:
            raise _Invalid(problem)
        return url.rstrip("/") if strip_slash else url

    return parse


def _path(raw: object, label: str) -> Path:
    if isinstance(raw, os.PathLike):
        return Path(raw).expanduser()
    text = _req_text(raw, label)
    if not text:
        raise _Invalid("must not be empty")
    return Path(text).expanduser()


def _bot_ids(raw: object, label: str) -> Mapping[str, BotIdEntry]:
    """*Degrade*: anything but a JSON object (or mapping) is a WARNING and ``{}``."""
    data: object = raw
    if isinstance(raw, str):
        try:
            data = json.loads(raw)
        except ValueError:
            logger.warning("relay: %s is not valid JSON; treating it as {}", label)
            return MappingProxyType({})
    if not isinstance(data, Mapping):
        logger.warning("relay: %s is not a JSON object; treating it as {}", label)
        return MappingProxyType({})
    out: dict[str, BotIdEntry] = {}
    for key, entry in data.items():
        platform = str(key).strip()
        if isinstance(entry, BotIdEntry):
            out[platform] = entry
            continue
        bot_id = entry.get("botId") if isinstance(entry, Mapping) else None
        if isinstance(bot_id, bool) or not isinstance(bot_id, str | int):
            logger.warning("relay: %s entry %r has no string botId; ignoring it", label, platform)
            continue
        username = entry.get("username") if isinstance(entry, Mapping) else None
        out[platform] = BotIdEntry(
            bot_id=str(bot_id).strip(),
            username=str(username).strip() if isinstance(username, str | int) else None,
        )
    return MappingProxyType(out)


def _mapping(raw: object, label: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise _Invalid("must be a mapping")
    return MappingProxyType(dict(raw))


def _allow_bots(raw: object, label: str) -> Mapping[str, str]:
    if not isinstance(raw, Mapping):
        raise _Invalid("must be a mapping of platform to <PLATFORM>_ALLOW_BOTS value")
    return MappingProxyType({str(k): str(v).strip().lower() for k, v in raw.items()})
