"""The :class:`GatewayConfig` class: its fields, derived values and :meth:`GatewayConfig.load`;
and :func:`warn_if_plain_text`, run once the gateway is about to start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from protocol._events import Identity
from protocol._urls import dial_url as _dial_url
from protocol._urls import redact_url
from relay_runtime._state._dsn import redact_dsn
from relay_runtime.config._checks import (
    _check_state_dir,
    _cross_check,
    _env_file_usable,
    _warn_short_secret,
    is_loopback_host,
)
from relay_runtime.config._names import _check_env_file_names, _check_env_names, _check_file_keys
from relay_runtime.config._sources import (
    _label_of,
    _parse,
    _read_config_file,
    _resolve,
    _Sources,
    read_env_file,
)
from relay_runtime.config._values import ENV_FILE_NAME, BotIdEntry, ConfigError, logger, mask
from relay_runtime.config._vars import _BY_FIELD, _EXTRA_PARSERS, _VARS, default_state_dir


def _hidden_repr(value: object) -> str:
    return mask(value)


def _dsn_repr(value: object) -> str:
    return repr(redact_dsn(value) if isinstance(value, str) else value)


def _secret() -> Any:
    return attrs.field(default=None, repr=_hidden_repr)


@attrs.frozen
class GatewayConfig:
    """Everything the gateway needs to know, validated (RC §10; field names per internals).

    ``GatewayConfig(relay_url=...)`` works with nothing else given; every other field has its
    RC §10 default. Construction validates and normalizes every field (a bad one raises
    :class:`ConfigError` naming the field); :meth:`load` does the same naming the variable or
    key the value came from. Secret fields show as ``<hidden>`` in the repr.

    ``platform_settings`` (the config file's mapping) and ``allow_bots`` (the
    ``<PLATFORM>_ALLOW_BOTS`` values seen at load time) are the inputs of the relevance
    policy projection (:func:`relay_runtime._control.project_policy`).
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
    #: PostgreSQL DSN for the gateway's state (None: SQLite in ``state_dir``); shown redacted.
    state_dsn: str | None = attrs.field(default=None, repr=_dsn_repr)
    #: The PostgreSQL lease's lifetime: a dead holder is taken over within it plus 1 s.
    lease_ttl_s: float = 8.0
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


_DEFAULTS: Final = GatewayConfig(state_dir=Path("/"))
