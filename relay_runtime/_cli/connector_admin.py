"""``relay-runtime connector <status|wait|inject|buffer|hold|flush|revoke|journal>``.

The subcommands that drive a running reference connector through its admin routes
(:mod:`relay_runtime.connector._admin`): ``--url`` or ``RELAY_CONNECTOR_URL`` (its
control-plane URL) and the admin token. Each prints JSON, one object per line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from typing import Any

from relay_runtime._cli.connector_usage import (
    _PREFIX,
    ENV_ADMIN_TOKEN,
    ENV_URL,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    UsageProblem,
    read_admin_token,
)
from relay_runtime.connector._admin import MAX_WAIT_S
from relay_runtime.connector._admin_client import AdminClient, AdminError


def add_admin_commands(commands: Any) -> None:
    """Register the admin subcommands on ``commands`` (the ``connector`` subparsers)."""

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text
        )
        sub.add_argument(
            "--url",
            dest="admin_url",
            metavar="URL",
            help=f"the running connector's control-plane URL (default: ${ENV_URL})",
        )
        sub.add_argument(
            "--admin-token-file",
            dest="client_token_file",
            metavar="FILE",
            help=f"the admin token (default: ${ENV_ADMIN_TOKEN})",
        )
        sub.add_argument(
            "--gateway-id",
            dest="target",
            metavar="ID",
            help="the gateway (default: the only one the connector knows)",
        )
        sub.set_defaults(admin_command=name)
        return sub

    add("status", "show every gateway the connector knows")
    wait = add("wait", "wait until a gateway is connected/disconnected/drained, or posts arrive")
    wait.add_argument(
        "until",
        choices=("connected", "disconnected", "drained", "journal"),
        help="what to wait for (journal: until the journal holds --count posts)",
    )
    wait.add_argument("--count", type=int, default=1, help="journal posts to wait for (default 1)")
    wait.add_argument(
        "--timeout", type=float, default=30.0, help="seconds before giving up (default 30)"
    )
    inject = add("inject", "deliver an inbound message to the gateway, live or buffered")
    inject.add_argument("text", help="the message text")
    inject.add_argument("--platform", dest="inject_platform", default="relay", help="(relay)")
    inject.add_argument("--chat", default="chat-1", help="chat id (default chat-1)")
    inject.add_argument("--chat-type", default="dm", help="dm, group, channel... (default dm)")
    inject.add_argument("--user", default="user-1", help="sender's user id (default user-1)")
    inject.add_argument(
        "--buffered",
        action="store_true",
        help="deliver through the ack-gated buffer (with a bufferId) rather than live",
    )
    inject.add_argument(
        "--unaddressed",
        action="store_true",
        help="the message does not mention or reply to the bot (for the relevance gate)",
    )
    add("buffer", "list what is buffered for the gateway, oldest first")
    add("hold", "flip the gateway to buffered-only (as after going_idle)")
    add("flush", "replay the gateway's buffer on its live connection now")
    add("revoke", "refuse the gateway's tokens and close its live socket with 4401")
    journal = add("journal", "show what the gateway posted (one JSON object per post)")
    journal.add_argument("--after", type=int, default=0, help="skip the first N posts")


def admin_main(args: argparse.Namespace) -> int:
    """Run the admin subcommand ``args`` asked for; returns the exit status."""
    command: str = args.admin_command
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    try:
        url = args.admin_url or os.environ.get(ENV_URL, "").strip()
        if not url:
            raise UsageProblem(f"no connector URL; pass --url or set {ENV_URL}")
        token = read_admin_token(args.client_token_file, os.environ)
        if token is None:
            raise UsageProblem(f"no admin token; set {ENV_ADMIN_TOKEN} or pass --admin-token-file")
        body, wait_s = _admin_body(command, args)
    except ValueError as exc:
        print(f"{_PREFIX} {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        reply = AdminClient(url, token).call(command, body, wait_s=wait_s)
    except AdminError as exc:
        print(f"{_PREFIX} {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for line in _admin_lines(command, reply):
        print(json.dumps(line, ensure_ascii=False, sort_keys=True))
    return EXIT_OK


def _admin_body(command: str, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    body: dict[str, Any] = {"gatewayId": args.target}
    if command == "wait":
        if not (math.isfinite(args.timeout) and 0 <= args.timeout <= MAX_WAIT_S):
            raise UsageProblem(f"--timeout must be 0-{MAX_WAIT_S:g} seconds, not {args.timeout}")
        if args.count < 0:
            raise UsageProblem(f"--count must be >= 0, not {args.count}")
        body |= {"until": args.until, "count": args.count, "timeoutS": args.timeout}
        return body, args.timeout
    if command == "inject":
        body |= {
            "text": args.text,
            "platform": args.inject_platform,
            "chatId": args.chat,
            "chatType": args.chat_type,
            "userId": args.user,
            "buffered": args.buffered,
            "addressed": not args.unaddressed,
        }
    elif command == "journal":
        if args.after < 0:
            raise UsageProblem(f"--after must be >= 0, not {args.after}")
        body["after"] = args.after
    return body, 0.0


def _admin_lines(command: str, reply: dict[str, Any]) -> list[Any]:
    if command in ("status", "wait"):
        return list(reply.get("gateways", []))
    if command == "buffer":
        return list(reply.get("entries", []))
    if command == "journal":
        return list(reply.get("entries", []))
    return [reply]
