"""``relay-runtime run``: run one gateway until a signal drains it (AR §4).

Startup resolves everything that can be wrong before any dial — the configuration
(:meth:`GatewayConfig.load`: ``--relay-url``/``--state-dir``/``--trust`` over
``GATEWAY_RELAY_*``/``RELAY_STATE_DIR``/``RELAY_TRUST`` over ``--config`` over defaults), the
agent (``--agent MODULE:ATTR``; the shipped ``openai_chat`` validates ``RELAY_AGENT_*``
here) and the trust policy (TR §4.1) — and exits 2 naming the option, variable or
file at fault. Then one root nursery runs the gateway and a signal watcher: the first
SIGINT/SIGTERM drains through ``going_idle`` (bounded, so the process exits within
``DRAIN_TIMEOUT_S``) and cancels; a second one cancels at once. A revoked credential ends
the gateway with :class:`RelayDisabled`, which the CLI turns into exit status 3. The
serving loop itself (shared with :func:`relay_runtime.serve_until_signalled`) is in
:mod:`relay_runtime._cli.serving`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Final

import trio

from protocol._connection import Timing
from protocol._urls import redact_url
from relay_runtime import _stop_signals as stop_signals
from relay_runtime._cli import UsageError
from relay_runtime._cli.serving import DRAIN_TIMEOUT_S, serve
from relay_runtime._delivery import Agent, TrustEvaluator
from relay_runtime._logs import register_secret
from relay_runtime._state._dsn import dsn_password, redact_dsn
from relay_runtime._statedir import FRESH_STATE_FLAG, check_state_dir
from relay_runtime.config import GatewayConfig, warn_if_plain_text

log = logging.getLogger("relay_runtime.cli.run")

DEFAULT_AGENT: Final = "relay_runtime.agents:echo"
REFUSED_REPORT_AFTER: Final = Timing().refused_report_after
_RUN_DESCRIPTION: Final = f"""\
Run a gateway: dial the connector, pass each inbound message through the trust policy,
run the agent, send its replies. It runs until stopped.

what happens when:
  SIGINT/SIGTERM (Ctrl-C)   drain through going_idle (at most {DRAIN_TIMEOUT_S:.0f} s), exit 0;
                            a second signal stops at once, also exit 0; a signal during
                            start-up stops before anything is dialed, exit 0
  bad configuration         one line naming the option, variable or file; exit 2
  connector unreachable     retried on the backoff ladder (1 s doubling to 30 s), for ever
  credentials refused       (HTTP 401 or close 4401 on every dial, never a handshake: a
                            wrong secret, an unknown or unprovisioned gateway id) an ERROR
                            after {REFUSED_REPORT_AFTER} refusals in a row naming the gateway id
                            and what to check, repeated after 2x as many each time; retried
                            for ever, or exit 3 with --exit-on-refused
  credentials revoked       (refused again after this process had a handshake, and once more
                            with a freshly minted token) exit 3

exit status: 0 stopped by a signal, 1 failure, 2 bad configuration, 3 relay disabled
"""
_OPENAI_AGENTS: Final = frozenset(
    {"relay_runtime.agents:openai_chat", "relay_runtime.agents._openai_chat:openai_chat"}
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="run a gateway against a relay connector",
        description=_RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--relay-url",
        metavar="URL",
        help="connector base URL (env GATEWAY_RELAY_URL), e.g. wss://connector.example",
    )
    parser.add_argument(
        "--agent",
        metavar="MODULE:ATTR",
        default=DEFAULT_AGENT,
        help=f"the agent, an async callable (turn) -> str | None (default {DEFAULT_AGENT})",
    )
    parser.add_argument(
        "--trust",
        metavar="open|careful|strict|PATH",
        help="trust policy: a preset or a policy file (env RELAY_TRUST; default careful)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML config file (gateway.relay_* keys, see docs)"
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state directory (env RELAY_STATE_DIR; default $XDG_STATE_HOME/relay-runtime)",
    )
    parser.add_argument(
        "--state-dsn",
        metavar="DSN",
        help="keep the gateway's state in PostgreSQL, with one serving process per gateway "
        "id (env RELAY_STATE_DSN, key gateway.relay_state_dsn; needs the postgres extra; "
        "default: relay.db in the state directory)",
    )
    parser.add_argument(
        "--exit-on-refused",
        action="store_true",
        default=None,
        help="exit 3 instead of retrying when the connector refuses these credentials "
        f"{REFUSED_REPORT_AFTER} dials in a row with no handshake "
        "(env GATEWAY_RELAY_EXIT_ON_REFUSED, key gateway.relay_exit_on_refused)",
    )
    parser.add_argument(
        FRESH_STATE_FLAG,
        action="store_true",
        help=(
            "accept an empty or missing relay.db in a state directory that has been used "
            "before, and start with empty state (trust store and dedupe window gone)"
        ),
    )
    parser.add_argument(
        "--turn-timeout",
        metavar="SECONDS",
        type=_turn_timeout,
        help=(
            "cancel a turn that runs longer, record it timed out and ack its message "
            "(env GATEWAY_RELAY_TURN_TIMEOUT_S; default 600; 0 = no limit; at most 86400)"
        ),
    )
    parser.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        type=_metrics_address,
        help=(
            "serve Prometheus /metrics and the /healthz, /readyz probes on this address "
            "(env GATEWAY_RELAY_METRICS; off by default, and 'off' turns it off; a bare "
            "port listens on 127.0.0.1)"
        ),
    )
    parser.set_defaults(func=run_command, handles_signals=True)


def _turn_timeout(text: str) -> float:
    from relay_runtime.config import ConfigError

    try:
        value = GatewayConfig(turn_timeout_s=text).turn_timeout_s  # type: ignore[arg-type]
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from None
    return value


def _metrics_address(text: str) -> str:
    """Checked here (so the error names the option); ``off`` passes through and wins."""
    from relay_runtime.config import ConfigError

    try:
        GatewayConfig(metrics=text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from None
    return text.strip()


# --------------------------------------------------------------------------- the agent


def load_agent(spec: str, environ: Mapping[str, str] | None = None) -> Agent:
    """The callable named by ``MODULE:ATTR`` (``ATTR`` may be dotted).

    Raises :class:`~relay_runtime._cli.UsageError` naming ``--agent`` when the module or the
    attribute is missing or not callable. For the shipped ``openai_chat`` agent the
    ``RELAY_AGENT_*`` settings are validated now, so a bad value stops startup (exit 2).
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise UsageError(f"--agent {spec!r}: expected MODULE:ATTR, e.g. {DEFAULT_AGENT}")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--agent {spec!r}: cannot import {module_name!r} ({exc})") from None
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"--agent {spec!r}: {module_name!r} has no {attr_path!r}") from None
    if not callable(target):
        raise UsageError(f"--agent {spec!r}: {type(target).__name__} is not callable")
    if spec in _OPENAI_AGENTS:
        from relay_runtime.agents._openai_chat import AgentConfigError, OpenAIChatConfig

        try:
            agent_config = OpenAIChatConfig.from_env(environ)
        except AgentConfigError as exc:
            raise UsageError(str(exc)) from None
        register_secret(agent_config.api_key)
    return target


# --------------------------------------------------------------------------- trust


@contextlib.asynccontextmanager
async def open_trust(
    config: GatewayConfig, environ: Mapping[str, str] | None = None
) -> AsyncIterator[TrustEvaluator]:
    """The running trust engine for ``config.trust`` over the gateway's state directory.

    The policy is resolved per TR §4.1 (a bad one raises ``TrustConfigError`` or
    ``PolicyError``: exit 2); ``RELAY_TRUST_DSN``, ``RELAY_TRUST_BOOTSTRAP_ADMINS`` and
    ``RELAY_TRUST_CASEFOLD_PLATFORMS`` come from ``environ``. The engine's background tasks
    live for the ``async with`` block.
    """
    from trust._engine import TrustConfig, open_trust_engine
    from trust._policy import resolve_policy

    # The trust store reads a path that does not exist yet as a database *file*; the
    # state directory must exist first (it holds both databases' tables).
    make_state_dir(config)

    trust_config = TrustConfig.from_env(
        environ, policy=resolve_policy(config.trust), state_dir=config.state_dir
    )
    async with open_trust_engine(trust_config) as engine:
        yield engine


def make_state_dir(config: GatewayConfig) -> None:
    """Create the state directory (mode 0700) if it is missing."""
    from relay_runtime.config import ConfigError

    existed = config.state_dir.exists()
    try:
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "state_dir", f"cannot create {os.fspath(config.state_dir)!r}: {exc}"
        ) from None
    if not config.state_dir.is_dir():
        raise ConfigError("state_dir", f"{os.fspath(config.state_dir)!r} is not a directory")
    if not existed:
        log.info("created state directory %s (mode 0700)", os.fspath(config.state_dir))


def _register_config_secrets(config: GatewayConfig) -> None:
    for value in (
        config.secret,
        config.delivery_key,
        config.enroll_token,
        config.identity_token,
        config.idp_client_secret,
        None if config.state_dsn is None else dsn_password(config.state_dsn),
    ):
        register_secret(value)


async def _main(config: GatewayConfig, agent: Agent) -> None:
    await serve(
        config,
        agent,
        lambda: open_trust(config),
        drain_timeout_s=DRAIN_TIMEOUT_S,
        freeze_heap=True,
    )


def _check_policy(config: GatewayConfig, given: str | None, config_file: str | None) -> None:
    """Resolve the policy now, so a bad one is exit 2 naming where it came from."""
    from trust._policy import PolicyError, TrustConfigError, resolve_policy

    if given:
        source = "--trust"
    elif os.environ.get("RELAY_TRUST", "").strip():
        source = "RELAY_TRUST"
    elif config_file:
        source = f"gateway.relay_trust in {config_file}"
    else:
        source = "trust"
    try:
        resolve_policy(config.trust)
    except TrustConfigError as exc:
        raise UsageError(f"{source}: {exc}") from None
    except PolicyError as exc:
        raise UsageError(f"{source}: {exc}") from None


def run_command(args: argparse.Namespace) -> int:
    """``run``: validate everything, then serve until a signal; returns the exit status."""
    config = GatewayConfig.load(
        args={
            "relay_url": args.relay_url,
            "state_dir": args.state_dir,
            "state_dsn": args.state_dsn,
            "trust": args.trust,
            "exit_on_refused": args.exit_on_refused,
            "turn_timeout_s": args.turn_timeout,
            "metrics": args.metrics,
        },
        config_path=args.config,
    )
    _register_config_secrets(config)
    register_secret(os.environ.get("RELAY_AGENT_API_KEY"))
    if config.relay_url is None:
        raise UsageError("no connector URL: pass --relay-url or set GATEWAY_RELAY_URL")
    if not config.enabled:
        raise UsageError(
            "GATEWAY_RELAY_ENABLED (or platforms.relay.enabled) is false: the relay is "
            "disabled by configuration"
        )
    agent = load_agent(args.agent)
    _check_policy(config, args.trust, args.config)
    check_state_dir(config.state_dir, fresh=getattr(args, "fresh_state", False))
    log.info(
        "starting gateway",
        extra={
            "relay_url": redact_url(config.relay_url),
            "gateway_id": config.gateway_id or "",
            "agent": args.agent,
            "trust": config.trust or "careful",
            "state_dir": os.fspath(config.state_dir),
            "state": "sqlite" if config.state_dsn is None else redact_dsn(config.state_dsn),
        },
    )
    if (early := stop_signals.received()) is not None:
        log.info("%s received during start-up; stopping", early.name)
        return 0
    warn_if_plain_text(config)
    trio.run(_main, config, agent)
    log.info("gateway stopped", extra={"event": "stopped"})
    return 0
