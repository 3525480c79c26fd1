"""The variable table: every setting's field, environment variable and config-file keys."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from relay_runtime.config._values import (
    DAY,
    ENV_PREFIX,
    HOUR,
    _allow_bots,
    _bool,
    _bot_ids,
    _http_url,
    _Int,
    _mapping,
    _metrics,
    _nonempty_text,
    _opt_text,
    _path,
    _platform_list,
    _platform_name,
    _relay_url,
    _req_text,
    _route_keys,
    _Seconds,
    _turn_timeout,
)

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
    # Gateway state in PostgreSQL instead of <state_dir>/relay.db, with a lease per gateway.
    _Var("state_dsn", _opt_text, "RELAY_STATE_DSN", (("gateway", "relay_state_dsn"),)),
    _Var(
        "lease_ttl_s", _Seconds(2, HOUR), "RELAY_LEASE_TTL_S", (("gateway", "relay_lease_ttl_s"),)
    ),
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


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/relay-runtime``, else ``~/.local/state/relay-runtime`` (AR §5)."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_STATE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "relay-runtime"
    home = env.get("HOME", "").strip()
    base = Path(home) if home else Path.home()
    return base / ".local" / "state" / "relay-runtime"
