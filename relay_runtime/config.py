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
import yaml

from protocol.events import Identity
from protocol.urls import dial_url as _dial_url
from protocol.urls import http_url_problem, relay_url_problem

__all__ = [
    "HIDDEN",
    "BotIdEntry",
    "ConfigError",
    "GatewayConfig",
    "bool_word",
    "default_state_dir",
    "mask",
    "read_env_file",
    "string_list",
]

logger = logging.getLogger("relay_runtime.config")

HIDDEN: Final = "<hidden>"
ENV_PREFIX: Final = "GATEWAY_RELAY_"
ENV_FILE_NAME: Final = "relay.env"
MIN_SECRET_LENGTH: Final = 32

#: The boolean words of RC §10, matched stripped and case-insensitively.
TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})
_PLATFORM_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_INT_RE: Final = re.compile(r"[+-]?[0-9]+")


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


def _int(minimum: int, *, strict: bool = False) -> Callable[[object, str], int]:
    def parse(raw: object, label: str) -> int:
        if isinstance(raw, bool):
            raise _Invalid("must be an integer, got a boolean")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
            value = int(raw.strip())
        else:
            raise _Invalid("must be an integer")
        if value < minimum or (strict and value == minimum):
            op = ">" if strict else "≥"
            raise _Invalid(f"must be an integer {op} {minimum}")
        return value

    return parse


def _seconds(raw: object, label: str) -> float:
    if isinstance(raw, bool):
        raise _Invalid("must be a number of seconds, got a boolean")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Invalid("must be a number of seconds") from None
    else:
        raise _Invalid("must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise _Invalid("must be a number of seconds > 0")
    return value


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
        raise _Invalid(f"{url!r} {problem}")
    return url.rstrip("/")


def _http_url(*, strip_slash: bool) -> Callable[[object, str], str | None]:
    def parse(raw: object, label: str) -> str | None:
        url = _opt_text(raw, label)
        if url is None:
            return None
        problem = http_url_problem(url)
        if problem is not None:
            raise _Invalid(f"{url!r} {problem}")
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
    _relay("max_frame_bytes", _int(1024)),
    _relay("handshake_timeout_s", _seconds),
    _relay("outbound_timeout_s", _seconds),
    _relay("idle_ack_timeout_s", _seconds),
    _relay("http_timeout_s", _seconds),
    _relay("token_ttl_s", _int(0, strict=True)),
    _relay("ping_interval_s", _seconds),
    _relay("ping_timeout_s", _seconds),
    _relay("backoff_base_s", _seconds),
    _relay("backoff_cap_s", _seconds),
    _relay("stable_after_s", _seconds),
    _relay("exit_on_refused", _bool),
    _relay("max_concurrent_turns", _int(1)),
    _relay("max_pending_inbound", _int(1)),
    _relay("outbox_max", _int(0)),
    _relay("outbox_ttl_s", _int(0, strict=True)),
    _relay("dedupe_window_s", _int(0, strict=True)),
    _relay("dedupe_max", _int(0, strict=True)),
    _Var("state_dir", _path, "RELAY_STATE_DIR", (("gateway", "relay_state_dir"),)),
    _relay("group_sessions_per_user", _bool),
    _relay("thread_sessions_per_user", _bool),
    _Var("trust", _nonempty_text, "RELAY_TRUST", (("gateway", "relay_trust"),)),
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
    state_dir: Path = attrs.field(factory=default_state_dir)
    group_sessions_per_user: bool = True
    thread_sessions_per_user: bool = False
    trust: str = "careful"
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
        file_label = "" if config_path is None else os.fspath(config_path)
        file_data = {} if config_path is None else _read_config_file(Path(config_path))
        sources = _Sources(given, env, {}, "", file_data, file_label)

        state_dir = _resolve(_BY_FIELD["state_dir"], sources)
        if state_dir is None:
            state_dir = default_state_dir(env)
        dotenv_path = Path(state_dir) / ENV_FILE_NAME
        state_label = _label_of(_BY_FIELD["state_dir"], sources) or "RELAY_STATE_DIR"
        if use_env_file and _is_file(dotenv_path, state_label):
            sources = attrs.evolve(
                sources, dotenv=read_env_file(dotenv_path), dotenv_label=os.fspath(dotenv_path)
            )

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
    text = repr(raw)
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


def _read_config_file(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            os.fspath(path), f"cannot read the config file ({exc.strerror})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(os.fspath(path), "the config file is not UTF-8 text") from None
    try:
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
        raise ConfigError(
            os.fspath(path), f"the config file is not valid YAML{where}{what}"
        ) from None
    if data is None:
        return MappingProxyType({})
    if not isinstance(data, dict):
        raise ConfigError(os.fspath(path), "the config file must hold a YAML mapping")
    return MappingProxyType(data)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``relay.env`` file (blank lines and ``#`` comments skipped)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(os.fspath(path), f"cannot read ({exc.strerror})") from None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "=" not in stripped:
            continue
        key, _, value = stripped.partition("=")
        out[key.strip()] = value.strip()
    return out


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


def _is_file(path: Path, label: str) -> bool:
    """``path.is_file()``, with an unreadable parent reported as a :class:`ConfigError`."""
    try:
        return path.is_file()
    except OSError as exc:
        raise ConfigError(label, f"cannot look at {os.fspath(path)!r} ({exc.strerror})") from None


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


def _warn_short_secret(values: Mapping[str, object], labels: Mapping[str, str]) -> None:
    secret = values["secret"]
    if isinstance(secret, str) and len(secret) < MIN_SECRET_LENGTH:
        logger.warning(
            "relay: %s is shorter than %d characters; use a longer secret",
            labels["secret"],
            MIN_SECRET_LENGTH,
        )


_DEFAULTS: Final = GatewayConfig(state_dir=Path("/"))
