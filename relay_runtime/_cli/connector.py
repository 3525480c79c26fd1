"""``relay-runtime connector``: run the reference connector, or drive a running one.

For local development, for checking a gateway by hand, and for benchmarks that keep the
connector in its own process. It is a development and test peer, not a production
connector. Served, it prints two lines on stdout: the ``ws://`` URL a gateway dials, then
the ``http://`` URL of its control plane (``/relay/provision|policy|enroll``, and the
operator routes under ``/admin/``); then it serves until SIGINT/SIGTERM.

Gateways are given as ``--gateway-id ID`` followed by its secrets: ``--secret-file FILE``
(one secret per non-empty line), ``--secret-env VAR`` (an environment variable), or
``--secret S`` (visible in ``ps``; warned about). Several secrets are a rotation list,
primary first. Without ``--gateway-id`` the gateway's own ``GATEWAY_RELAY_ID`` and
``GATEWAY_RELAY_SECRET`` are used, so a gateway and a connector started from one shell agree.

Security choices (docs/connector.md): ``--allow-unauthenticated`` is refused on a
non-loopback ``--host`` (exit 2); upgrade tokens that never expire or live longer than
``--max-token-lifetime`` (600 s) are refused unless ``--accept-legacy-tokens``; the admin
routes need the admin token (``RELAY_CONNECTOR_ADMIN_TOKEN`` or ``--admin-token-file``), are
off without one, and are refused on a non-loopback ``--control-host`` unless
``--allow-remote-admin``.

The subcommands (``status``, ``wait``, ``inject``, ``buffer``, ``hold``, ``flush``,
``revoke``, ``journal``) call a running connector's admin routes: ``--url`` or
``RELAY_CONNECTOR_URL`` (its control-plane URL) and the same admin token. Each prints JSON,
one object per line.

``--bench N`` turns the process into a load source: once a gateway is connected it injects
``N`` messages at ``--rate`` per second, each in its own chat, waits for the gateway's
``send`` to each chat and for the connector's result to each of those sends, closes the
gateway's socket 1001, prints one JSON summary of the round-trip times, then exits.

Exit status: 0 done; 1 a ``--bench`` run timed out before every reply, or an admin call
failed; 2 bad usage.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import trio

from relay_runtime._cli.connector_admin import add_admin_commands, admin_main
from relay_runtime._cli.connector_bench import Bench as Bench
from relay_runtime._cli.connector_usage import (
    _PREFIX,
    ENV_ADMIN_TOKEN,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    read_admin_token,
)
from relay_runtime._cli.connector_usage import (
    UsageProblem as UsageProblem,
)
from relay_runtime._cli.connector_usage import (
    read_secret_file as read_secret_file,
)
from relay_runtime._heap import settle_heap
from relay_runtime._logs import register_secret
from relay_runtime.connector import DEFAULT_DESCRIPTORS, DEFAULT_KEEP_RECORDS, ReferenceConnector
from relay_runtime.connector._admin import AdminApi, operator_app
from relay_runtime.connector._control_plane import ControlPlane, ControlPlaneRegistry, serve_http
from relay_runtime.connector._records import Post
from relay_runtime.connector._upgrade_auth import DEFAULT_MAX_TOKEN_LIFETIME_S

log = logging.getLogger("relay_runtime.cli.connector")


ENV_GATEWAY_ID = "GATEWAY_RELAY_ID"
ENV_SECRET = "GATEWAY_RELAY_SECRET"
#: How long a finished ``--bench`` waits for the connector to answer the last sends.
BENCH_SETTLE_S = 10.0


class _Credential(argparse.Action):
    """Collects ``--gateway-id`` / ``--secret*`` in command-line order, as one list."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        items: list[tuple[str, str]] = list(getattr(namespace, "credentials", None) or [])
        items.append((self.dest, str(values)))
        namespace.credentials = items


def register(subparsers: Any) -> None:
    """Add the ``connector`` command and its admin subcommands."""
    parser = subparsers.add_parser(
        "connector",
        help="run the reference connector (a development and test peer), or drive a running one",
        description="Serve /relay on HOST:PORT and the control plane on CONTROL-HOST:"
        "CONTROL-PORT, and print both URLs; or, with a subcommand, call a running "
        "connector's admin routes. A development and test peer, not a production connector.",
    )
    _serve_options(parser)
    parser.set_defaults(func=_main, credentials=None)
    commands = parser.add_subparsers(
        dest="admin_command",
        metavar="SUBCOMMAND",
        help="call a running connector's admin routes (none: serve a connector)",
    )
    add_admin_commands(commands)


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: 0, any free one)")
    parser.add_argument(
        "--gateway-id",
        dest="gateway_id",
        action=_Credential,
        metavar="ID",
        help=f"accept this gateway (repeatable; default: ${ENV_GATEWAY_ID})",
    )
    parser.add_argument(
        "--secret-file",
        dest="secret_file",
        action=_Credential,
        metavar="FILE",
        help="secrets of the preceding --gateway-id, one per non-empty line (primary first)",
    )
    parser.add_argument(
        "--secret-env",
        dest="secret_env",
        action=_Credential,
        metavar="VAR",
        help="a secret of the preceding --gateway-id, read from environment variable VAR",
    )
    parser.add_argument(
        "--secret",
        dest="secret",
        action=_Credential,
        metavar="SECRET",
        help=f"a secret of the preceding --gateway-id (default: ${ENV_SECRET}); visible in "
        "ps, prefer --secret-file or --secret-env",
    )
    parser.add_argument(
        "--platform",
        action="append",
        choices=sorted(DEFAULT_DESCRIPTORS),
        help="serve this preset descriptor (repeatable; default: all presets; other "
        "platforms always get a generic descriptor)",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="accept upgrades without a bearer (as gateway ''); loopback --host only",
    )
    parser.add_argument(
        "--max-token-lifetime",
        type=float,
        default=DEFAULT_MAX_TOKEN_LIFETIME_S,
        metavar="SECONDS",
        help="refuse upgrade tokens that expire later than this from now, or never "
        f"(default {DEFAULT_MAX_TOKEN_LIFETIME_S:g})",
    )
    parser.add_argument(
        "--accept-legacy-tokens",
        action="store_true",
        help="accept tokens that never expire (exp=0) or live longer than --max-token-lifetime",
    )
    parser.add_argument(
        "--reject-mode",
        choices=("http", "close"),
        default="http",
        help="refuse bad upgrades with HTTP 401 or by closing 4401 (default: http)",
    )
    parser.add_argument(
        "--always-buffer",
        action="store_true",
        help="deliver every inbound through the ack-gated buffer",
    )
    parser.add_argument(
        "--buffer-prefix",
        metavar="PREFIX",
        help="run prefix of every bufferId (buf-PREFIX-<n>); 1-64 of A-Z a-z 0-9 . _ ~ -. "
        "Default: random per run. Never reuse one against the same gateway state dir",
    )
    parser.add_argument(
        "--drain-window", type=int, default=1, help="un-acked replays allowed at once (default 1)"
    )
    parser.add_argument(
        "--control-host",
        default="127.0.0.1",
        help="interface of the HTTP control plane and admin routes (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--control-port",
        type=int,
        default=0,
        help="port of the HTTP control plane and admin routes (default: 0, any free one)",
    )
    parser.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help=f"the admin routes' bearer token (default: ${ENV_ADMIN_TOKEN}; none: admin off)",
    )
    parser.add_argument(
        "--allow-remote-admin",
        action="store_true",
        help="serve the admin routes on a non-loopback --control-host",
    )
    parser.add_argument(
        "--journal",
        metavar="FILE",
        help="also append every post the gateway makes to FILE, one JSON object per line",
    )
    parser.add_argument("--bench", type=int, metavar="N", help="inject N messages, then exit")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="--bench messages per second (default 100)"
    )
    parser.add_argument(
        "--bench-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the gateway and every reply (default 120)",
    )


# --------------------------------------------------------------------------- inputs


def parse_credentials(
    items: Sequence[tuple[str, str]] | None,
    env: Mapping[str, str],
    read_file: Callable[[str, str], list[str]] = read_secret_file,
) -> dict[str, list[str]]:
    """Gateway id -> secrets from the ordered ``--gateway-id``/``--secret*`` items, else env.

    Raises ``ValueError`` (a :class:`UsageProblem`) naming the problem: a secret before any
    ``--gateway-id``, a gateway without a secret, an unreadable file, an unset variable.
    """
    result: dict[str, list[str]] = {}
    current: str | None = None
    for kind, value in items or []:
        option = "--" + kind.replace("_", "-")
        if kind == "gateway_id":
            if not value:
                raise UsageProblem("--gateway-id must not be empty")
            current = value
            result.setdefault(current, [])
            continue
        if current is None:
            raise UsageProblem(f"{option} must follow a --gateway-id")
        if kind == "secret_file":
            result[current].extend(read_file(value, option))
        elif kind == "secret_env":
            secret = env.get(value, "").strip()
            if not secret:
                raise UsageProblem(f"--secret-env {value}: the variable is not set or empty")
            result[current].append(secret)
        elif value:
            result[current].append(value)
    if not items:
        gateway_id = env.get(ENV_GATEWAY_ID, "").strip()
        secret = env.get(ENV_SECRET, "").strip()
        if gateway_id and secret:
            result[gateway_id] = [secret]
        elif secret:
            raise UsageProblem(f"{ENV_SECRET} is set without {ENV_GATEWAY_ID}")
    for gateway_id, secrets in result.items():
        if not secrets:
            raise UsageProblem(f"--gateway-id {gateway_id!r} has no --secret-file/--secret-env")
    return result


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` or a loopback IP literal).

    Any other name counts as non-loopback: it is not resolved, and may not stay loopback.
    """
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_serve_options(args: argparse.Namespace) -> None:
    """Refuse what is unsafe or meaningless; ``UsageProblem`` names it."""
    if args.drain_window < 1 or (args.bench is not None and (args.bench < 1 or args.rate <= 0)):
        raise UsageProblem("--drain-window, --bench and --rate must be > 0")
    if not (math.isfinite(args.max_token_lifetime) and args.max_token_lifetime > 0):
        raise UsageProblem(
            f"--max-token-lifetime must be a number of seconds > 0, not {args.max_token_lifetime}"
        )
    for option, port in (("--port", args.port), ("--control-port", args.control_port)):
        if not 0 <= port <= 65535:
            raise UsageProblem(f"{option} must be 0-65535, not {port}")
    if args.allow_unauthenticated and not is_loopback(args.host):
        raise UsageProblem(
            f"--allow-unauthenticated with --host {args.host!r}: anyone who can reach it "
            "could act as a gateway; use --host 127.0.0.1 or give gateways secrets"
        )


# --------------------------------------------------------------------------- serving


def _main(args: argparse.Namespace) -> int:
    if getattr(args, "admin_command", None) is not None:
        return admin_main(args)
    try:
        _check_serve_options(args)
        secrets = parse_credentials(args.credentials, os.environ)
        admin_token = read_admin_token(args.admin_token_file, os.environ)
        if not secrets and not args.allow_unauthenticated:
            raise UsageProblem(
                "no gateway credentials; pass --gateway-id with --secret-file or --secret-env, "
                f"set {ENV_GATEWAY_ID}/{ENV_SECRET}, or use --allow-unauthenticated"
            )
        remote = not is_loopback(args.control_host)
        if admin_token is not None and remote and not args.allow_remote_admin:
            raise UsageProblem(
                f"admin routes on --control-host {args.control_host!r} would be reachable "
                "from the network; use 127.0.0.1 or pass --allow-remote-admin"
            )
        connector = build_connector(args, secrets)
    except ValueError as exc:
        print(f"{_PREFIX} {exc}", file=sys.stderr)
        return EXIT_USAGE
    for values in secrets.values():
        for secret in values:
            register_secret(secret)
    register_secret(admin_token)
    if any(kind == "secret" for kind, _ in args.credentials or []):
        log.warning(
            "--secret puts the secret on the command line, visible to every user in ps; "
            "use --secret-file or --secret-env"
        )
    if not is_loopback(args.host) or not is_loopback(args.control_host):
        log.warning(
            "serving on a non-loopback address over plain ws:// and http://; this is a "
            "development peer and nothing it carries is encrypted"
        )
    journal: IO[str] | None = None
    if args.journal is not None:
        try:
            journal = open(args.journal, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            print(f"{_PREFIX} --journal {args.journal}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        connector.journal_sink = _journal_writer(journal)
    try:
        return trio.run(run_connector, connector, args, admin_token)
    finally:
        if journal is not None:
            journal.close()


def _journal_writer(handle: IO[str]) -> Callable[[Post], None]:
    def write(post: Post) -> None:
        handle.write(json.dumps(post.to_json(), ensure_ascii=False) + "\n")
        handle.flush()

    return write


def build_connector(args: argparse.Namespace, secrets: dict[str, list[str]]) -> ReferenceConnector:
    """The connector the parsed options ask for; ``ValueError`` names a bad option."""
    descriptors = {p: DEFAULT_DESCRIPTORS[p] for p in args.platform} if args.platform else None
    lifetime = None if args.accept_legacy_tokens else args.max_token_lifetime
    registry = ControlPlaneRegistry(max_token_lifetime_s=lifetime)
    return ReferenceConnector(
        secrets=secrets,
        registry=registry,
        descriptors=descriptors,
        allow_unauthenticated=args.allow_unauthenticated,
        reject_mode=args.reject_mode,
        always_buffer=args.always_buffer,
        drain_window=args.drain_window,
        buffer_prefix=args.buffer_prefix,
        max_token_lifetime_s=lifetime,
        # A --bench run is finite and reads every received frame by position.
        keep_records=None if getattr(args, "bench", None) is not None else DEFAULT_KEEP_RECORDS,
    )


async def run_connector(
    connector: ReferenceConnector, args: argparse.Namespace, admin_token: str | None = None
) -> int:
    """Serve until a signal (or until the ``--bench`` run ends); returns the exit status.

    Prints the ``ws://`` URL, then the control plane's ``http://`` URL, one per line.
    """
    status = EXIT_OK
    async with trio.open_nursery() as nursery:
        url = await nursery.start(connector.serve, args.host, args.port)
        registry = connector.registry
        if not isinstance(registry, ControlPlaneRegistry):
            registry = ControlPlaneRegistry()
        app = operator_app(ControlPlane(registry), AdminApi(connector, admin_token, registry))
        control_host = getattr(args, "control_host", "127.0.0.1")
        control_port = getattr(args, "control_port", 0)
        server = await nursery.start(
            lambda task_status: serve_http(
                app, host=control_host, port=control_port, task_status=task_status
            )
        )
        print(url, flush=True)
        print(server.url, flush=True)
        log.info(
            "control plane on %s (admin routes %s)",
            server.url,
            "on" if admin_token else f"off: no {ENV_ADMIN_TOKEN}",
        )
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        # Serving from here on: the start-up heap out of the collector's way, as `run` does.
        settle_heap()
        if args.bench is not None:
            run = Bench(connector, args.bench, args.rate)
            with trio.move_on_after(args.bench_timeout):
                await run.run()
            with trio.move_on_after(BENCH_SETTLE_S):
                await run.settle()
            summary = run.summary()
            print(json.dumps(summary, sort_keys=True), flush=True)
            status = EXIT_OK if summary["answered"] == summary["count"] else EXIT_FAILURE
            nursery.cancel_scope.cancel()
    return status


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return
