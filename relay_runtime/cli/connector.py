"""``relay-runtime connector``: run the reference connector as a standalone process.

For local development and for benchmarks that keep the connector in its own process. It is
a development and test peer, not a production connector. On start it prints the ``ws://``
URL a gateway dials (the first line of stdout), then serves until SIGINT/SIGTERM.

Gateways are given as ``--gateway-id ID --secret S [--secret S2 ...]`` groups (a second
secret is the rotation secondary), else taken from ``GATEWAY_RELAY_ID`` and
``GATEWAY_RELAY_SECRET`` so a gateway and a connector started from one shell agree.

``--bench N`` turns the process into a load source: once a gateway is connected it injects
``N`` messages at ``--rate`` per second, each in its own chat, waits for the gateway's
``send`` to each chat and prints one JSON summary of the round-trip times, then exits.

Exit status: 0 done; 1 a ``--bench`` run timed out before every reply; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from protocol.actions import Send
from protocol.events import MessageEvent, SessionSource
from protocol.frames import Outbound
from relay_runtime.connector import DEFAULT_DESCRIPTORS, Connection, ReferenceConnector

__all__ = ["Bench", "parse_credentials", "register", "run_connector"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

ENV_GATEWAY_ID = "GATEWAY_RELAY_ID"
ENV_SECRET = "GATEWAY_RELAY_SECRET"


class _Credential(argparse.Action):
    """Collects ``--gateway-id`` / ``--secret`` in command-line order, as one list."""

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
    """Add the ``connector`` subcommand."""
    parser = subparsers.add_parser(
        "connector",
        help="run the reference connector (a development and test peer) on loopback",
        description="Serve /relay on HOST:PORT and print the ws:// URL. A development and "
        "test peer, not a production connector.",
    )
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
        "--secret",
        dest="secret",
        action=_Credential,
        metavar="SECRET",
        help=f"a secret of the preceding --gateway-id (default: ${ENV_SECRET})",
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
        help="accept upgrades without a bearer (as gateway '')",
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
    parser.set_defaults(func=_main, credentials=None)


def parse_credentials(
    items: Sequence[tuple[str, str]] | None, env: dict[str, str] | os._Environ[str]
) -> dict[str, list[str]]:
    """Gateway id -> secrets from the ordered ``--gateway-id``/``--secret`` items, else env.

    Raises ``ValueError`` naming the problem: a secret before any ``--gateway-id``, or a
    gateway without a secret.
    """
    result: dict[str, list[str]] = {}
    current: str | None = None
    for kind, value in items or []:
        if kind == "gateway_id":
            if not value:
                raise ValueError("--gateway-id must not be empty")
            current = value
            result.setdefault(current, [])
        elif current is None:
            raise ValueError("--secret must follow a --gateway-id")
        elif value:
            result[current].append(value)
    if not items:
        gateway_id = env.get(ENV_GATEWAY_ID, "").strip()
        secret = env.get(ENV_SECRET, "").strip()
        if gateway_id and secret:
            result[gateway_id] = [secret]
        elif secret:
            raise ValueError(f"{ENV_SECRET} is set without {ENV_GATEWAY_ID}")
    for gateway_id, secrets in result.items():
        if not secrets:
            raise ValueError(f"--gateway-id {gateway_id!r} has no --secret")
    return result


def _main(args: argparse.Namespace) -> int:
    try:
        secrets = parse_credentials(args.credentials, os.environ)
    except ValueError as exc:
        print(f"relay-runtime connector: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not secrets and not args.allow_unauthenticated:
        print(
            "relay-runtime connector: no gateway credentials; pass --gateway-id/--secret, set "
            f"{ENV_GATEWAY_ID}/{ENV_SECRET}, or use --allow-unauthenticated",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.drain_window < 1 or (args.bench is not None and (args.bench < 1 or args.rate <= 0)):
        print(
            "relay-runtime connector: --drain-window, --bench and --rate must be > 0",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        connector = build_connector(args, secrets)
    except ValueError as exc:
        print(f"relay-runtime connector: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return trio.run(run_connector, connector, args)


def build_connector(args: argparse.Namespace, secrets: dict[str, list[str]]) -> ReferenceConnector:
    """The connector the parsed options ask for; ``ValueError`` names a bad option."""
    descriptors = {p: DEFAULT_DESCRIPTORS[p] for p in args.platform} if args.platform else None
    return ReferenceConnector(
        secrets=secrets,
        descriptors=descriptors,
        allow_unauthenticated=args.allow_unauthenticated,
        reject_mode=args.reject_mode,
        always_buffer=args.always_buffer,
        drain_window=args.drain_window,
        buffer_prefix=args.buffer_prefix,
    )


async def run_connector(connector: ReferenceConnector, args: argparse.Namespace) -> int:
    """Serve until a signal (or until the ``--bench`` run ends); returns the exit status."""
    status = EXIT_OK
    async with trio.open_nursery() as nursery:
        url = await nursery.start(connector.serve, args.host, args.port)
        print(url, flush=True)
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        if args.bench is not None:
            run = Bench(connector, args.bench, args.rate)
            with trio.move_on_after(args.bench_timeout):
                await run.run()
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


class Bench:
    """Injects ``count`` messages at ``rate``/s and times each until the gateway's reply.

    Each message goes to its own chat ``bench-<i>``; its round trip ends at the first
    ``outbound`` ``send`` to that chat. Times are seconds of the trio clock. Bound
    :meth:`run` with a cancel scope; :meth:`summary` reports whatever was measured.
    """

    def __init__(self, connector: ReferenceConnector, count: int, rate: float) -> None:
        self.connector = connector
        self.count = count
        self.rate = rate
        self.started: dict[str, float] = {}
        self.latencies: list[float] = []
        self.answered: set[str] = set()
        self._seen = 0
        self._t0: float | None = None

    async def run(self) -> None:
        """Wait for a gateway, inject every message on schedule, wait for every reply.

        The first gateway to complete a handshake is the one measured.
        """
        connector = self.connector

        def handshaken() -> Connection | None:
            return next((c for c in connector.connections if c.open and c.handshaken), None)

        await connector.wait_for(lambda: handshaken() is not None)
        first = handshaken()
        assert first is not None
        gateway_id = first.gateway_id
        self._t0 = t0 = trio.current_time()
        for i in range(self.count):
            chat = f"bench-{i}"
            await trio.sleep_until(t0 + i / self.rate)
            self.started[chat] = trio.current_time()
            source = SessionSource(platform="relay", chat_id=chat, chat_type="dm", user_id="u")
            event = MessageEvent(text=f"ping {i}", source=source)
            await connector.inject(event, gateway_id=gateway_id)
        await connector.wait_for(self._collect)

    def _collect(self) -> bool:
        received = self.connector.received
        for record in received[self._seen :]:
            frame = record.frame
            if isinstance(frame, Outbound) and isinstance(frame.action, Send):
                chat = frame.action.chat_id
                if chat in self.started and chat not in self.answered:
                    self.answered.add(chat)
                    self.latencies.append(record.at - self.started[chat])
        self._seen = len(received)
        return len(self.answered) == self.count

    def summary(self) -> dict[str, Any]:
        """The figures so far, as one JSON-ready object."""
        self._collect()
        latencies = sorted(self.latencies)
        t0 = trio.current_time() if self._t0 is None else self._t0
        return {
            "count": self.count,
            "answered": len(self.answered),
            "rate": self.rate,
            "duration_s": round(trio.current_time() - t0, 6),
            "p50_ms": _percentile_ms(latencies, 0.50),
            "p95_ms": _percentile_ms(latencies, 0.95),
            "p99_ms": _percentile_ms(latencies, 0.99),
            "max_ms": _percentile_ms(latencies, 1.0),
        }


def _percentile_ms(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return round(sorted_values[index] * 1000, 3)
