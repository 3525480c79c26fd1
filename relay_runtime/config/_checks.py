"""Checks of a whole configuration: the RC §10 rules that tie two settings together, the state
directory and its ``relay.env``, loopback hosts (for the plain-text warning) and the
short-secret warning."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from relay_runtime.config._values import ENV_PREFIX, MIN_SECRET_LENGTH, ConfigError, logger


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

    The ``~/.ssh`` rules of :func:`relay_runtime._statedir.check_env_file`: a relay.env that
    someone else could have written is refused, not read.
    """
    from relay_runtime._statedir import check_env_file

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


def _warn_short_secret(values: Mapping[str, object], labels: Mapping[str, str]) -> None:
    secret = values["secret"]
    if isinstance(secret, str) and len(secret) < MIN_SECRET_LENGTH:
        logger.warning(
            "relay: %s is shorter than %d characters; use a longer secret",
            labels["secret"],
            MIN_SECRET_LENGTH,
        )
