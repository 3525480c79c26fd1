"""How to build a trust engine: :class:`TrustConfig`, its ``RELAY_TRUST_*`` environment
variables, and the store and policy it names."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import attrs

from trust._agent import LlmSettings
from trust._consultation import TrustAgentLike
from trust._identity import DEFAULT_CANONICALIZER, Canonicalizer, parse_platform_list
from trust._invites import GLOBAL_FAILURES_PER_HOUR, MAX_FAILURES_PER_HOUR
from trust._payments import NoPaymentVerifier, PaymentVerifier
from trust._policy import Policy, TrustConfigError, resolve_policy
from trust._store.base import ClientStore

INVITE_FAILURES_PER_CLIENT_RANGE: Final = (1, 1_000)
INVITE_FAILURES_PER_HOUR_RANGE: Final = (1, 1_000_000)


@attrs.frozen
class TrustConfig:
    """How to build a :class:`TrustEngine`.

    ``policy`` is a :class:`Policy`, a preset name or a file path (None: ``careful``).
    ``store`` is used as given (and not closed); otherwise ``dsn`` opens PostgreSQL and
    ``state_dir`` the SQLite database.
    """

    policy: Policy | str | None = None
    state_dir: str | os.PathLike[str] | None = None
    dsn: str | None = None
    store: ClientStore | None = None
    agent: TrustAgentLike | None = None
    verifier: PaymentVerifier = attrs.field(factory=NoPaymentVerifier)
    canonicalizer: Canonicalizer = DEFAULT_CANONICALIZER
    bootstrap_admins: tuple[str, ...] = ()
    flush_interval_s: float = 5.0
    tail_interval_s: float = 1.0
    prune_interval_s: float = 600.0
    agent_promotions_per_hour: int = 5
    llm_calls_per_client_hour: int = 3
    llm_calls_per_hour: int = 120
    cache_size: int = 100_000
    llm: LlmSettings | None = None
    """Used to build the trust agent (closed with the engine) when ``agent`` is None."""
    invite_failures_per_client_hour: int = attrs.field(
        default=MAX_FAILURES_PER_HOUR,
        validator=lambda _, a, v: _check_range(a.name, v, INVITE_FAILURES_PER_CLIENT_RANGE),
    )
    """Failed ``/invite`` attempts one client may make in any hour (T50); counted in the
    store, so every instance on it shares the window."""
    invite_failures_per_hour: int = attrs.field(
        default=GLOBAL_FAILURES_PER_HOUR,
        validator=lambda _, a, v: _check_range(a.name, v, INVITE_FAILURES_PER_HOUR_RANGE),
    )
    """Failed ``/invite`` attempts all clients together may make in any hour; past it every
    attempt is refused unlooked. Keep it tight when the policy has short 0.6.5 codes."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> TrustConfig:
        """Settings from ``RELAY_TRUST``, ``RELAY_STATE_DIR`` and the ``RELAY_TRUST_*``
        variables of :data:`TRUST_ENV`; an unknown ``RELAY_TRUST_*`` name (a typo) or a
        value out of range is a one-line :class:`TrustConfigError`."""
        env = os.environ if env is None else env
        _check_names(env)
        canonicalizer = Canonicalizer(
            casefold_platforms=parse_platform_list(env.get("RELAY_TRUST_CASEFOLD_PLATFORMS"))
        )
        admins = tuple(
            a.strip() for a in env.get("RELAY_TRUST_BOOTSTRAP_ADMINS", "").split(",") if a.strip()
        )
        values: dict[str, object] = {
            "policy": env.get("RELAY_TRUST") or None,
            "state_dir": env.get("RELAY_STATE_DIR") or None,
            "dsn": env.get("RELAY_TRUST_DSN") or None,
            "canonicalizer": canonicalizer,
            "bootstrap_admins": admins,
            "llm": LlmSettings.from_env(env),
        }
        for name, key, bounds in (
            (
                "RELAY_TRUST_INVITE_FAILURES_PER_CLIENT_HOUR",
                "invite_failures_per_client_hour",
                INVITE_FAILURES_PER_CLIENT_RANGE,
            ),
            (
                "RELAY_TRUST_INVITE_FAILURES_PER_HOUR",
                "invite_failures_per_hour",
                INVITE_FAILURES_PER_HOUR_RANGE,
            ),
        ):
            raw = env.get(name, "").strip()
            if raw:
                values[key] = _env_int(name, raw, bounds)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


TRUST_ENV: Final = frozenset(
    {
        "RELAY_TRUST_DSN",
        "RELAY_TRUST_BOOTSTRAP_ADMINS",
        "RELAY_TRUST_CASEFOLD_PLATFORMS",
        "RELAY_TRUST_INVITE_FAILURES_PER_CLIENT_HOUR",
        "RELAY_TRUST_INVITE_FAILURES_PER_HOUR",
        "RELAY_TRUST_LLM_BASE_URL",
        "RELAY_TRUST_LLM_MODEL",
        "RELAY_TRUST_LLM_API_KEY",
        "RELAY_TRUST_LLM_TIMEOUT",
    }
)
"""Every ``RELAY_TRUST_*`` variable the trust engine reads (besides ``RELAY_TRUST``)."""


def _check_names(env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if name.startswith("RELAY_TRUST_") and name not in TRUST_ENV:
            close = difflib.get_close_matches(name, sorted(TRUST_ENV), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise TrustConfigError(f"unknown trust setting {name}{hint}")


def _check_range(name: str, value: object, bounds: tuple[int, int]) -> None:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TrustConfigError(f"{name}: {value!r} is not an integer in {lo}..{hi}")


def _env_int(name: str, raw: str, bounds: tuple[int, int]) -> int:
    try:
        value = int(raw, 10)
    except ValueError:
        value = None
    lo, hi = bounds
    if value is None or not lo <= value <= hi:
        raise TrustConfigError(f"{name}={raw[:40]!r}: expected an integer in {lo}..{hi}")
    return value


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/relay-runtime`` (AR §5)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "relay-runtime"


async def open_store(config: TrustConfig) -> ClientStore:
    """The store ``config`` names: PostgreSQL for a DSN, else the state-dir SQLite file."""
    if config.store is not None:
        return config.store
    if config.dsn:
        from trust._store.postgres import open_postgres_store

        return await open_postgres_store(config.dsn)
    from trust._store.sqlite import open_sqlite_store

    return await open_sqlite_store(config.state_dir or default_state_dir())


def engine_policy(config: TrustConfig) -> Policy:
    """The policy ``config`` names, loaded (TR §4.1)."""
    if isinstance(config.policy, Policy):
        return config.policy
    return resolve_policy(config.policy)
