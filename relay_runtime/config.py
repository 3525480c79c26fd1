"""Gateway configuration: one frozen :class:`GatewayConfig`, loaded with one precedence rule.

Every setting of RC §10 has a field here (snake case, the relay URL as ``relay_url``). A value
comes from, in order: an explicit argument, the environment (``GATEWAY_RELAY_<NAME>``,
``RELAY_TRUST``, ``RELAY_STATE_DIR``), ``<state dir>/relay.env`` (written by ``enroll``; the
process environment wins over it), the YAML config file (``gateway.relay_<name>`` and the
``platforms.relay.*`` spellings), then the default. An empty value counts as unset.

A bad value raises :class:`ConfigError` naming the variable or key and what is wrong with the
value, secrets shown as ``<hidden>``; there is no silent fallback except for the two
*degrade* settings (``GATEWAY_RELAY_BOT_IDS`` and ``<PLATFORM>_ALLOW_BOTS``), which log a
WARNING and fall back to empty/false.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import yaml

from protocol.events import Identity
from protocol.urls import dial_url as _dial_url
from protocol.urls import http_url_problem, redact_url, relay_url_problem

__all__ = [
    "HIDDEN",
    "BotIdEntry",
    "ConfigError",
    "GatewayConfig",
    "bool_word",
    "default_state_dir",
    "mask",
    "metrics_address",
    "read_env_file",
    "string_list",
    "warn_if_plain_text",
]

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


# --------------------------------------------------------------------------- the variables


@attrs.frozen
class _Var:
    """One setting: its field, its environment variable and its config-file keys."""

    field: str
    parse: Callable[[object, str], Any]
    env: str | None
    keys: tuple[tuple[str, ...], ...]
    secret: bool = False


def _relay(field: str, parse: Callable[[object, str], Any], *, secret: bool = False) -> _Var:
    """A ``GATEWAY_RELAY_<FIELD>`` ↔ ``gateway.relay_<field>`` setting."""
    return _Var(field, parse, ENV_PREFIX + field.upper(), (("gateway", f"relay_{field}"),), secret)


def _idp(name: str, parse: Callable[[object, str], Any], *, secret: bool = False) -> _Var:
    keys = (("gateway", "idp", name), ("gateway", f"relay_idp_{name}"))
    return _Var(f"idp_{name}", parse, f"{ENV_PREFIX}IDP_{name.upper()}", keys, secret)


_VARS: Final[tuple[_Var, ...]] = (
    _Var(
        "relay_url",
        _relay_url,
        ENV_PREFIX + "URL",
        (("gateway", "relay_url"), ("platforms", "relay", "extra", "relay_url")),
    ),
    _Var(
        "enabled",
        _bool,
        ENV_PREFIX + "ENABLED",
        (("gateway", "relay_enabled"), ("platforms", "relay", "enabled")),
    ),
    _relay("platform", _platform_name),
    _relay("bot_id", _req_text),
    _relay("platforms", _platform_list),
    _relay("bot_ids", _bot_ids),
    _Var("gateway_id", _opt_text, ENV_PREFIX + "ID", (("gateway", "relay_id"),)),
    _relay("secret", _opt_text, secret=True),
    _relay("delivery_key", _opt_text, secret=True),
    _relay("endpoint", _http_url(strip_slash=False)),
    _relay("route_keys", _route_keys),
    _relay("instance_id", _opt_text),
    _relay("wake_url", _http_url(strip_slash=True)),
    _relay("wake_confirmed", _bool),
    _relay("enroll_token", _opt_text, secret=True),
    _relay("identity_token", _opt_text, secret=True),
    _idp("token_url", _http_url(strip_slash=False)),
    _idp("client_id", _opt_text),
    _idp("client_secret", _opt_text, secret=True),
    _idp("scope", _opt_text),
    # The ranges are documented in docs/configuration.md; keep the two in step.
    _relay("max_frame_bytes", _Int(1024, 64 * 1024 * 1024)),
    _relay("handshake_timeout_s", _Seconds(0.1, HOUR)),
    _relay("outbound_timeout_s", _Seconds(0.1, HOUR)),
    _relay("idle_ack_timeout_s", _Seconds(0.1, HOUR)),
    _relay("http_timeout_s", _Seconds(0.1, HOUR)),
    _relay("token_ttl_s", _Int(10, 600)),
    _relay("ping_interval_s", _Seconds(1, HOUR)),
    _relay("ping_timeout_s", _Seconds(1, HOUR)),
    _relay("backoff_base_s", _Seconds(0.001, HOUR)),
    _relay("backoff_cap_s", _Seconds(0.001, DAY)),
    _relay("stable_after_s", _Seconds(0.01, DAY)),
    _relay("exit_on_refused", _bool),
    _relay("max_concurrent_turns", _Int(1, 10_000)),
    _relay("max_pending_inbound", _Int(1, 1_000_000)),
    _relay("outbox_max", _Int(0, 1_000_000)),
    _relay("outbox_ttl_s", _Int(1, 30 * DAY)),
    _relay("dedupe_window_s", _Int(1, 30 * DAY)),
    _relay("dedupe_max", _Int(1, 10_000_000)),
    _relay("turns_max", _Int(1, 100_000_000)),
    _relay("storage_failure_limit_s", _Seconds(1, DAY)),
    _Var("state_dir", _path, "RELAY_STATE_DIR", (("gateway", "relay_state_dir"),)),
    _relay("group_sessions_per_user", _bool),
    _relay("thread_sessions_per_user", _bool),
    _Var("trust", _nonempty_text, "RELAY_TRUST", (("gateway", "relay_trust"),)),
    _relay("turn_timeout_s", _turn_timeout),
    _relay("metrics", _metrics),
)
_BY_FIELD: Final = {var.field: var for var in _VARS}

# Fields that are not RC §10 settings but carry what the relevance projection needs.
_EXTRA_PARSERS: Final[Mapping[str, Callable[[object, str], Any]]] = {
    "platform_settings": _mapping,
    "allow_bots": _allow_bots,
}


def _hidden_repr(value: object) -> str:
    return mask(value)


def _secret() -> Any:
    return attrs.field(default=None, repr=_hidden_repr)


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/relay-runtime``, else ``~/.local/state/relay-runtime`` (AR §5)."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_STATE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "relay-runtime"
    home = env.get("HOME", "").strip()
    base = Path(home) if home else Path.home()
    return base / ".local" / "state" / "relay-runtime"


@attrs.frozen
class GatewayConfig:
    """Everything the gateway needs to know, validated (RC §10; field names per internals).

    ``GatewayConfig(relay_url=...)`` works with nothing else given; every other field has its
    RC §10 default. Construction validates and normalizes every field (a bad one raises
    :class:`ConfigError` naming the field); :meth:`load` does the same naming the variable or
    key the value came from. Secret fields show as ``<hidden>`` in the repr.

    ``platform_settings`` (the config file's mapping) and ``allow_bots`` (the
    ``<PLATFORM>_ALLOW_BOTS`` values seen at load time) are the inputs of the relevance
    policy projection (:func:`relay_runtime.control.project_policy`).
    """

    relay_url: str | None = None
    enabled: bool = True
    platform: str = "relay"
    bot_id: str = ""
    platforms: tuple[str, ...] = ()
    bot_ids: Mapping[str, BotIdEntry] = attrs.field(
        factory=lambda: MappingProxyType({}), hash=False
    )
    gateway_id: str | None = None
    secret: str | None = _secret()
    delivery_key: str | None = _secret()
    endpoint: str | None = None
    route_keys: tuple[str, ...] = ()
    instance_id: str | None = None
    wake_url: str | None = None
    wake_confirmed: bool = False
    enroll_token: str | None = _secret()
    identity_token: str | None = _secret()
    idp_token_url: str | None = None
    idp_client_id: str | None = None
    idp_client_secret: str | None = _secret()
    idp_scope: str | None = None
    max_frame_bytes: int = 1_048_576
    handshake_timeout_s: float = 30.0
    outbound_timeout_s: float = 30.0
    idle_ack_timeout_s: float = 10.0
    http_timeout_s: float = 15.0
    token_ttl_s: int = 300
    ping_interval_s: float = 30.0
    ping_timeout_s: float = 60.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    stable_after_s: float = 60.0
    exit_on_refused: bool = False
    max_concurrent_turns: int = 16
    max_pending_inbound: int = 1000
    outbox_max: int = 1000
    outbox_ttl_s: int = 86_400
    dedupe_window_s: int = 86_400
    dedupe_max: int = 10_000
    #: Turn records kept at most (besides 24 h), so relay_turns stays bounded on disk.
    turns_max: int = 100_000
    #: How long the state db may fail to write before the gateway exits (status 1).
    storage_failure_limit_s: float = 60.0
    state_dir: Path = attrs.field(factory=default_state_dir)
    group_sessions_per_user: bool = True
    thread_sessions_per_user: bool = False
    trust: str = "careful"
    turn_timeout_s: float = 600.0
    metrics: str | None = None
    platform_settings: Mapping[str, Any] = attrs.field(
        factory=lambda: MappingProxyType({}), repr=False, eq=False
    )
    allow_bots: Mapping[str, str] = attrs.field(factory=lambda: MappingProxyType({}), hash=False)

    def __attrs_post_init__(self) -> None:
        for var in _VARS:
            raw = getattr(self, var.field)
            value = _parse(var.parse, raw, var.field, secret=var.secret)
            object.__setattr__(self, var.field, value)
        for name, parse in _EXTRA_PARSERS.items():
            object.__setattr__(self, name, _parse(parse, getattr(self, name), name))
        _cross_check({field: getattr(self, field) for field in _BY_FIELD}, lambda field: field)

    # ------------------------------------------------------------------ derived values

    @property
    def identities(self) -> tuple[Identity, ...]:
        """The ordered identity set, primary first (RC §10, last paragraph)."""
        if not self.platforms:
            return (Identity(platform=self.platform, bot_id=self.bot_id),)
        out: list[Identity] = []
        for name in self.platforms:
            entry = self.bot_ids.get(name)
            if entry is not None:
                bot_id = entry.bot_id
            elif name == self.platform:
                bot_id = self.bot_id
            else:
                bot_id = ""
            out.append(Identity(platform=name, bot_id=bot_id))
        return tuple(out)

    @property
    def dial_url(self) -> str | None:
        """The ``ws(s)://…/relay`` URL to dial, or ``None`` without a relay URL."""
        return None if self.relay_url is None else _dial_url(self.relay_url)

    @property
    def relay_active(self) -> bool:
        """A relay URL is set and ``enabled`` does not veto it."""
        return self.relay_url is not None and self.enabled

    @property
    def has_pinned_credentials(self) -> bool:
        """Both ``gateway_id`` and ``secret`` are configured (provisioning is then skipped)."""
        return self.gateway_id is not None and self.secret is not None

    @property
    def env_file(self) -> Path:
        """``<state dir>/relay.env``, where ``enroll`` persists credentials."""
        return self.state_dir / ENV_FILE_NAME

    # ------------------------------------------------------------------ loaders

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        """Environment (and ``<state dir>/relay.env``) over the defaults."""
        return cls.load(environ=environ)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> GatewayConfig:
        """The YAML config file over the defaults; the environment is not consulted."""
        return cls.load(environ={}, config_path=path, use_env_file=False)

    @classmethod
    def load(
        cls,
        *,
        args: Mapping[str, object] | None = None,
        environ: Mapping[str, str] | None = None,
        config_path: str | os.PathLike[str] | None = None,
        use_env_file: bool = True,
    ) -> GatewayConfig:
        """Resolve every setting: argument > environment > relay.env > config file > default.

        ``args`` maps field names to values (``None`` or ``""`` = not given). ``environ``
        defaults to ``os.environ``. Raises :class:`ConfigError` for any bad value, for an
        unreadable or unparsable config file, and for a state directory that cannot be
        created or written.
        """
        env = os.environ if environ is None else environ
        given = {} if args is None else dict(args)
        unknown = sorted(set(given) - set(_BY_FIELD))
        if unknown:
            raise ConfigError(unknown[0], "is not a configuration setting")
        _check_env_names(env)
        file_label = "" if config_path is None else os.fspath(config_path)
        file_data = {} if config_path is None else _read_config_file(Path(config_path))
        _check_file_keys(file_data, file_label)
        sources = _Sources(given, env, {}, "", file_data, file_label)

        state_dir = _resolve(_BY_FIELD["state_dir"], sources)
        if state_dir is None:
            state_dir = default_state_dir(env)
        dotenv_path = Path(state_dir) / ENV_FILE_NAME
        state_label = _label_of(_BY_FIELD["state_dir"], sources) or "RELAY_STATE_DIR"
        if use_env_file and _env_file_usable(Path(state_dir), state_label):
            dotenv = read_env_file(dotenv_path)
            _check_env_file_names(dotenv, os.fspath(dotenv_path))
            sources = attrs.evolve(sources, dotenv=dotenv, dotenv_label=os.fspath(dotenv_path))

        values: dict[str, object] = {"state_dir": state_dir}
        labels: dict[str, str] = {}
        for var in _VARS:
            if var.field == "state_dir":
                labels[var.field] = _label_of(var, sources) or var.env or var.field
                continue
            value = _resolve(var, sources)
            if value is not None:
                values[var.field] = value
            labels[var.field] = _label_of(var, sources) or var.env or var.field
        defaults = attrs.asdict(_DEFAULTS, recurse=False)
        merged = {field: values.get(field, defaults[field]) for field in _BY_FIELD}
        _cross_check(merged, labels.__getitem__)
        _check_state_dir(Path(str(merged["state_dir"])), labels["state_dir"])
        _warn_short_secret(merged, labels)

        platforms = merged["platforms"]
        identity_platforms: tuple[str, ...] = (
            platforms if isinstance(platforms, tuple) and platforms else (str(merged["platform"]),)
        )
        allow_bots = {
            name: env[f"{name.upper()}_ALLOW_BOTS"].strip().lower()
            for name in identity_platforms
            if env.get(f"{name.upper()}_ALLOW_BOTS", "").strip()
        }
        return cls(**values, platform_settings=file_data, allow_bots=allow_bots)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- resolution


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


# --------------------------------------------------------------------------- unknown names
#
# A typo must not be silently ignored. The GATEWAY_RELAY_ namespace, relay.env and the
# gateway.relay_* / gateway.idp.* keys are ours alone: any unknown name there is an error.
# RELAY_* variables are shared with the agent (RELAY_AGENT_*), the trust engine
# (RELAY_TRUST_*), the reference connector (RELAY_CONNECTOR_*) and the test and bench
# harnesses, so there only a name that is not one of theirs and looks like one of ours
# (a near miss of RELAY_TRUST / RELAY_STATE_DIR, or GATEWAY_RELAY_<X> without its prefix) is
# refused. Other top-level and gateway keys of the file belong to the host application.

#: RELAY_* families read by other parts of the project; never refused here.
OTHER_RELAY_PREFIXES: Final = (
    "RELAY_AGENT_",
    "RELAY_TRUST_",
    "RELAY_CONNECTOR_",
    "RELAY_TEST_",
    "RELAY_CHAOS_",
    "RELAY_FUZZ_",
    "RELAY_BENCH_",
)
#: Single RELAY_* names read elsewhere: the tests' PostgreSQL switch, and
#: ``<PLATFORM>_ALLOW_BOTS`` for a platform named ``relay``.
OTHER_RELAY_NAMES: Final = frozenset({"RELAY_REQUIRE_PG", "RELAY_ALLOW_BOTS"})
_NEAR_MISS: Final = 0.85


def _closest(name: str, known: list[str], cutoff: float = 0.6) -> str | None:
    found = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return found[0] if found else None


def _closest_prefixed(name: str, known: list[str]) -> str | None:
    """The closest ``GATEWAY_RELAY_*`` name, comparing what follows the shared prefix."""
    tails = [n[len(ENV_PREFIX) :] for n in known if n.startswith(ENV_PREFIX)]
    near = _closest(name[len(ENV_PREFIX) :], tails)
    return None if near is None else ENV_PREFIX + near


def _unknown(label: str, suggestion: str | None, what: str = "setting") -> ConfigError:
    hint = f"; did you mean {suggestion}?" if suggestion else " (see docs/configuration.md)"
    return ConfigError(label, f"is not a known {what}{hint}")


def _our_env_names() -> list[str]:
    return sorted(var.env for var in _VARS if var.env is not None)


def _check_env_names(env: Mapping[str, str]) -> None:
    """Refuse an environment variable that is ours by name or looks like a typo of one."""
    ours = _our_env_names()
    known = set(ours)
    unprefixed = {f"RELAY_{n[len(ENV_PREFIX) :]}": n for n in ours if n.startswith(ENV_PREFIX)}
    relay_names = sorted({n for n in ours if not n.startswith(ENV_PREFIX)} | set(unprefixed))
    for name in sorted(env):
        if name in known:
            continue
        if name.startswith(ENV_PREFIX):
            raise _unknown(name, _closest_prefixed(name, ours), "GATEWAY_RELAY_* variable")
        if not name.startswith("RELAY_") or name in OTHER_RELAY_NAMES:
            continue
        if name.startswith(OTHER_RELAY_PREFIXES):
            continue
        if name in unprefixed:
            raise _unknown(name, unprefixed[name], "variable")
        near = _closest(name, relay_names, _NEAR_MISS)
        if near is not None:
            raise _unknown(name, unprefixed.get(near, near), "variable")


def _check_env_file_names(dotenv: Mapping[str, str], label: str) -> None:
    ours = _our_env_names()
    for name in sorted(dotenv):
        if name not in ours:
            near = _closest_prefixed(name, ours) if name.startswith(ENV_PREFIX) else None
            near = near or _closest(name, ours)
            raise _unknown(f"{name} in {label}", near, "relay.env setting")


def _file_keys() -> dict[tuple[str, ...], list[str]]:
    """Known keys by parent path: ``("gateway",)`` -> ``["relay_url", ...]``, etc."""
    out: dict[tuple[str, ...], list[str]] = {}
    for var in _VARS:
        for key in var.keys:
            for depth in range(1, len(key)):
                out.setdefault(key[:depth], []).append(key[depth])
    out[("gateway",)].append("platforms")  # per-platform relevance blocks (control.py)
    return {parent: sorted(set(keys)) for parent, keys in out.items()}


def _check_file_keys(data: Mapping[str, Any], file_label: str) -> None:
    """Refuse unknown keys in our parts of the config file, naming the closest known one."""
    if not data:
        return
    known = _file_keys()

    def refuse(path: tuple[str, ...], suggestion: str | None) -> ConfigError:
        return _unknown(f"{'.'.join(path)} in {file_label}", suggestion, "config key")

    relay_keys = known[("gateway",)]
    for key in data:
        text = str(key)
        if text in ("gateway", "platforms"):
            continue
        if text.startswith("relay_"):
            near = _closest(text, relay_keys)
            raise refuse((text,), f"gateway.{near}" if near else None)
        near = _closest(text, ["gateway", "platforms"], 0.8)
        if near is not None:
            raise refuse((text,), near)

    def check_block(path: tuple[str, ...], *, strict: bool, prefix: str = "relay_") -> None:
        block = _node(data, path)
        if block is None:
            return
        if not isinstance(block, Mapping):
            raise ConfigError(f"{'.'.join(path)} in {file_label}", "must be a mapping")
        names = known.get(path, [])
        for key in block:
            text = str(key)
            if text in names:
                continue
            near = _closest(text, names, 0.6 if strict or text.startswith(prefix) else 0.85)
            if strict or text.startswith(prefix) or near is not None:
                raise refuse((*path, text), ".".join((*path, near)) if near else None)

    check_block(("gateway",), strict=False)
    check_block(("gateway", "idp"), strict=True)
    check_block(("platforms",), strict=False, prefix="\0")
    check_block(("platforms", "relay"), strict=False)
    check_block(("platforms", "relay", "extra"), strict=False)


def _node(data: Mapping[str, Any], path: tuple[str, ...]) -> object:
    node: object = data
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _cross_check(values: Mapping[str, object], label: Callable[[str], str]) -> None:
    """The RC §10 rules that tie two settings together."""

    def num(field: str) -> float:
        value = values[field]
        assert isinstance(value, int | float)
        return value

    pairs = (
        ("ping_timeout_s", "ping_interval_s", "must be ≥"),
        ("backoff_cap_s", "backoff_base_s", "must be ≥"),
        ("max_pending_inbound", "max_concurrent_turns", "must be ≥"),
    )
    for high, low, words in pairs:
        if num(high) < num(low):
            raise ConfigError(
                label(high),
                f"{words} {label(low)} (got {num(high):g} < {num(low):g})",
            )
    if values["secret"] is not None and values["gateway_id"] is None:
        raise ConfigError(
            label("secret"),
            f"a secret is set without a gateway id; set {ENV_PREFIX}ID as well",
        )
    if values["idp_token_url"] is not None and (
        values["idp_client_id"] is None or values["idp_client_secret"] is None
    ):
        raise ConfigError(
            label("idp_token_url"),
            f"needs {ENV_PREFIX}IDP_CLIENT_ID and {ENV_PREFIX}IDP_CLIENT_SECRET as well",
        )


def _env_file_usable(state_dir: Path, label: str) -> bool:
    """Whether ``<state_dir>/relay.env`` exists and may be trusted (else a ConfigError).

    The ``~/.ssh`` rules of :func:`relay_runtime.statedir.check_env_file`: a relay.env that
    someone else could have written is refused, not read.
    """
    from relay_runtime.statedir import check_env_file

    try:
        return check_env_file(state_dir)
    except OSError as exc:  # e.g. a parent directory we may not search
        raise ConfigError(
            label, f"cannot look at {os.fspath(state_dir)!r} ({exc.strerror})"
        ) from None


def _check_state_dir(path: Path, label: str) -> None:
    """The state directory exists and is writable, or could be created (nothing is created)."""
    try:
        _check_state_dir_access(path, label)
    except OSError as exc:  # e.g. a parent directory we may not search
        raise ConfigError(
            label, f"{os.fspath(path)!r} cannot be used ({exc.strerror or exc})"
        ) from None


def _check_state_dir_access(path: Path, label: str) -> None:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(label, f"{os.fspath(probe)!r} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        verb = "written" if probe == path else "created"
        raise ConfigError(label, f"{os.fspath(path)!r} cannot be {verb} (permission denied)")


def is_loopback_host(host: str) -> bool:
    """``localhost`` (and ``*.localhost``) or a loopback IP address."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.partition("%")[0]).is_loopback
    except ValueError:
        return False


def warn_if_plain_text(config: GatewayConfig) -> bool:
    """Log a WARNING when the relay URL is plain ``ws``/``http`` to a host off this machine.

    The bearer token and every message would cross the network unencrypted. Called once the
    gateway is about to start (not by :meth:`GatewayConfig.load`, so a run that stops on a
    configuration error prints its one error line and nothing else). Returns whether it
    warned.
    """
    url = config.relay_url
    if url is None:
        return False
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("ws", "http") or is_loopback_host(parts.hostname or ""):
        return False
    logger.warning(
        "relay: the relay URL %s is plain %s to a host that is not loopback: the upgrade "
        "credential and every message cross the network unencrypted; use wss:// or https://",
        redact_url(url),
        parts.scheme.lower(),
    )
    return True


def _warn_short_secret(values: Mapping[str, object], labels: Mapping[str, str]) -> None:
    secret = values["secret"]
    if isinstance(secret, str) and len(secret) < MIN_SECRET_LENGTH:
        logger.warning(
            "relay: %s is shorter than %d characters; use a longer secret",
            labels["secret"],
            MIN_SECRET_LENGTH,
        )


_DEFAULTS: Final = GatewayConfig(state_dir=Path("/"))
