"""``enroll``, ``provision`` and ``policy``: control-plane calls from the command line (RC §9).

Exit status: 0 done; 1 the connector refused or could not be reached (its message is
printed); 2 bad configuration or usage (a missing enrollment token, connector URL or
identity token is named). Secrets are printed as ``<hidden>``. Errors are one
``relay-runtime: error: <message>`` line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from protocol._urls import http_url_problem, redact_url, relay_url_problem
from relay_runtime._cli import print_error, print_warning
from relay_runtime._control import (
    UNCONFIRMED_WAKE_WARNING,
    ControlError,
    Credentials,
    default_gateway_id,
    enroll,
    open_client,
    persist_enrollment,
    pinned_credentials,
    policy_for,
    provision,
    resolve_identity_token,
    send_policy,
    shown_credentials,
)
from relay_runtime.config import ENV_FILE_NAME, ConfigError, GatewayConfig

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

NO_IDENTITY_TOKEN = (
    "no identity token: set GATEWAY_RELAY_IDENTITY_TOKEN, or GATEWAY_RELAY_IDP_TOKEN_URL "
    "with GATEWAY_RELAY_IDP_CLIENT_ID and GATEWAY_RELAY_IDP_CLIENT_SECRET"
)
NO_RELAY_URL = "no connector URL: pass {flag} or set GATEWAY_RELAY_URL"


class _UsageError(Exception):
    """A usage problem: printed, exit 2."""


def register(subparsers: Any) -> None:
    """Add the ``enroll``, ``provision`` and ``policy`` subcommands."""
    enroll_parser = subparsers.add_parser(
        "enroll",
        help="enroll this gateway with a connector using a one-time enrollment token",
        description="Exchange an enrollment token for gateway credentials and store them in "
        f"<state dir>/{ENV_FILE_NAME} (mode 0600).",
    )
    enroll_parser.add_argument(
        "--token", metavar="TOKEN", help="enrollment token (env GATEWAY_RELAY_ENROLL_TOKEN)"
    )
    enroll_parser.add_argument(
        "--connector-url", metavar="URL", help="connector base URL (env GATEWAY_RELAY_URL)"
    )
    enroll_parser.add_argument(
        "--gateway-id", metavar="ID", help="gateway id (default: gw-<hostname>)"
    )
    enroll_parser.add_argument(
        "--wake-url",
        metavar="URL",
        help="URL the connector GETs to wake this gateway (env GATEWAY_RELAY_WAKE_URL)",
    )
    _common(enroll_parser)
    enroll_parser.set_defaults(func=_sync(run_enroll))

    provision_parser = subparsers.add_parser(
        "provision",
        help="provision every identity with the connector (credentials are only shown)",
        description="Register every configured identity (platform, bot id) with the connector "
        "using an identity token (GATEWAY_RELAY_IDENTITY_TOKEN, or the GATEWAY_RELAY_IDP_* "
        "client credentials) and print the gateway credentials it issues. Nothing is stored: "
        "a running gateway provisions itself at start the same way.",
    )
    provision_parser.add_argument(
        "--relay-url", metavar="URL", help="connector base URL (env GATEWAY_RELAY_URL)"
    )
    provision_parser.add_argument(
        "--gateway-id", metavar="ID", help="gateway id (default: gw-<hostname>)"
    )
    _common(provision_parser)
    provision_parser.set_defaults(func=_sync(run_provision))

    policy_parser = subparsers.add_parser(
        "policy",
        help="show or send the relevance policy projected from the configuration",
        description="Show or send the relevance policy (which group messages the connector "
        "delivers: require_mention, free_response_channels, <PLATFORM>_ALLOW_BOTS) projected "
        "per platform from the configuration. A running gateway declares it at start.",
    )
    mode = policy_parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--show", action="store_true", help="print the projected policy")
    mode.add_argument("--send", action="store_true", help="declare it to the connector")
    policy_parser.add_argument(
        "--relay-url", metavar="URL", help="connector base URL (env GATEWAY_RELAY_URL)"
    )
    _common(policy_parser)
    policy_parser.set_defaults(func=_sync(run_policy))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file to read")
    parser.add_argument("--state-dir", metavar="DIR", help="state directory (env RELAY_STATE_DIR)")


def _sync(command: Callable[[argparse.Namespace], Awaitable[int]]) -> Callable[..., int]:
    def run(args: argparse.Namespace) -> int:
        return trio.run(command, args)

    return run


def _load(args: argparse.Namespace, **extra: object) -> GatewayConfig:
    given: dict[str, object] = {"state_dir": args.state_dir, **extra}
    return GatewayConfig.load(args=given, config_path=args.config)


def _err(message: str) -> None:
    print_error(message)


def nothing_to_declare(platform: str) -> str:
    """What ``policy`` says for a platform without a policy: what would make one."""
    if platform == "relay":
        return (
            "relay: nothing to declare: a relevance policy is per chat platform; set "
            "GATEWAY_RELAY_PLATFORM (e.g. discord) and then require_mention or "
            "free_response_channels in the config file, or DISCORD_ALLOW_BOTS "
            "(see docs/control-plane.md, Relevance policy)"
        )
    return (
        f"{platform}: nothing to declare (the connector's defaults apply): set "
        f"require_mention or free_response_channels in the config file (top level or a "
        f"{platform}: block), or {platform.upper()}_ALLOW_BOTS=mentions|all"
    )


def _print_pairs(pairs: Any) -> None:
    for key, value in pairs:
        print(f"  {key}={value}")


async def run_enroll(args: argparse.Namespace) -> int:
    """``enroll``: returns the exit status."""
    try:
        config = _load(args)
        token = args.token or config.enroll_token
        if not token:
            raise _UsageError("no enrollment token: pass --token or set GATEWAY_RELAY_ENROLL_TOKEN")
        url = (args.connector_url or "").strip() or config.relay_url
        if not url:
            raise _UsageError(NO_RELAY_URL.format(flag="--connector-url"))
        if (problem := relay_url_problem(url)) is not None:
            raise _UsageError(f"--connector-url {redact_url(url)!r} {problem}")
        wake_url = (args.wake_url or "").strip().rstrip("/") or config.wake_url
        if wake_url and (problem := http_url_problem(wake_url)) is not None:
            raise _UsageError(f"--wake-url {redact_url(wake_url)!r} {problem}")
        gateway_id = args.gateway_id or default_gateway_id()
        async with open_client() as client:
            identity_token = await resolve_identity_token(config, client)
            if identity_token is None:
                raise _UsageError(NO_IDENTITY_TOKEN)
            result = await enroll(
                connector_url=url,
                enrollment_token=token,
                identity_token=identity_token,
                gateway_id=gateway_id,
                wake_url=wake_url,
                client=client,
                http_timeout_s=config.http_timeout_s,
            )
    except (ConfigError, _UsageError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except ControlError as exc:
        _err(str(exc))
        return EXIT_FAILURE
    try:
        written = persist_enrollment(
            config.state_dir, result, connector_url=args.connector_url or None
        )
    except ControlError as exc:
        _err(str(exc))
        return EXIT_FAILURE
    except OSError as exc:
        _err(f"could not write {config.state_dir / ENV_FILE_NAME}: {exc.strerror or exc}")
        return EXIT_FAILURE
    print(f"Enrolled as {result.credentials.gateway_id}. Wrote {config.env_file}:")
    _print_pairs(written)
    if wake_url and not result.wake_confirmed:
        print_warning(UNCONFIRMED_WAKE_WARNING)
    print("Restart the gateway to use the new credentials.")
    return EXIT_OK


async def run_provision(args: argparse.Namespace) -> int:
    """``provision``: returns the exit status."""
    try:
        config = _load(args, relay_url=args.relay_url)
        if config.relay_url is None:
            raise _UsageError(NO_RELAY_URL.format(flag="--relay-url"))
        async with open_client() as client:
            identity_token = await resolve_identity_token(config, client)
            if identity_token is None:
                raise _UsageError(NO_IDENTITY_TOKEN)
            result = await provision(config, identity_token, client, gateway_id=args.gateway_id)
    except (ConfigError, _UsageError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    for identity in result.succeeded:
        print(f"provisioned platform={identity.platform} botId={identity.bot_id!r}")
    for identity, message in result.errors:
        _err(f"provision failed for platform={identity.platform}: {message}")
    if result.credentials is not None:
        print("Credentials (kept in memory by a running gateway; not stored):")
        _print_pairs(shown_credentials(result.credentials))
    if result.wake_confirmed:
        print("Wake URL confirmed.")
    return EXIT_OK if result.succeeded else EXIT_FAILURE


async def run_policy(args: argparse.Namespace) -> int:
    """``policy --show | --send``: returns the exit status."""
    try:
        config = _load(args, relay_url=args.relay_url)
        platforms = list(dict.fromkeys(identity.platform for identity in config.identities))
        policies = {platform: policy_for(config, platform) for platform in platforms}
        if args.show:
            for platform, policy in policies.items():
                print(
                    nothing_to_declare(platform)
                    if policy is None
                    else f"{platform}: {_compact(policy)}"
                )
            return EXIT_OK
        if config.relay_url is None:
            raise _UsageError(NO_RELAY_URL.format(flag="--relay-url"))
        async with open_client() as client:
            credentials = await _credentials_for_policy(config, client)
            failed: list[str] = []
            for platform, policy in policies.items():
                if policy is None:
                    print(nothing_to_declare(platform))
                    continue
                if await send_policy(config, credentials, policy, client):
                    print(f"{platform}: declared {_compact(policy)}")
                else:
                    failed.append(platform)
    except (ConfigError, _UsageError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except ControlError as exc:
        _err(str(exc))
        return EXIT_FAILURE
    for platform in failed:
        _err(f"{platform}: the connector did not accept the policy (see the warning above)")
    return EXIT_FAILURE if failed else EXIT_OK


async def _credentials_for_policy(config: GatewayConfig, client: Any) -> Credentials:
    pinned = pinned_credentials(config)
    if pinned is not None:
        return pinned
    identity_token = await resolve_identity_token(config, client)
    if identity_token is None:
        raise _UsageError(
            "no credentials: set GATEWAY_RELAY_ID and GATEWAY_RELAY_SECRET (or run enroll), "
            "or an identity token to provision with"
        )
    result = await provision(config, identity_token, client)
    if result.credentials is None:
        raise ControlError("provisioning issued no credentials; cannot declare a policy")
    return result.credentials


def _compact(policy: Any) -> str:
    return json.dumps(policy, separators=(",", ":"), ensure_ascii=False)
