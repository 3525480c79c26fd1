"""``relay-runtime trust ...``: the local operator's view of the trust store (TR §8).

The CLI acts as the local operator ``local:<OS user>`` (tier ``operator``), which no
policy's ``disable`` list binds. Exit status: 0 done, 1 refused (``TrustOpError``) or the
store failed, 2 usage or policy error (an invalid client id included). ``--json`` prints
machine-readable results. Errors are one ``relay-runtime: error: <message>`` line.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from trust._functions import import_co
from trust._ops import TrustOps, format_client
from trust._policy import (
    FORMAT_065,
    PRESETS,
    Policy,
    PolicyError,
    TrustConfigError,
    load_preset,
    preset_text,
)
from trust._records import AuditTier, StoreError, TrustOpError

if TYPE_CHECKING:
    from trust._engine import TrustConfig

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
OPERATOR: Final[AuditTier] = "operator"
"""The CLI's tier: the local operator, whom no policy's ``disable`` list binds."""


def local_actor() -> str:
    """``local:<OS user>``: who the CLI acts as."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"local:{user}"


def _out(args: argparse.Namespace, text: str, data: object) -> None:
    if args.json:
        print(json.dumps(data, default=str, ensure_ascii=False))
    else:
        print(text)


def _err(message: str) -> None:
    print(f"relay-runtime: error: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"relay-runtime: warning: {message}", file=sys.stderr)


def iso_utc(epoch_ms: int | None) -> str:
    """An epoch-milliseconds time as ISO 8601 UTC (``2026-12-13T21:40:00Z``); ``never``."""
    if epoch_ms is None:
        return "never"
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    return moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Refusals that are a usage error (exit 2) rather than a refused operation (exit 1).
_USAGE_CODES: Final = frozenset({"invalid_client_id"})


def _config(args: argparse.Namespace) -> TrustConfig:
    """The environment's trust settings; an explicit ``--state-dir`` or ``--dsn`` wins
    over both ``RELAY_STATE_DIR`` and ``RELAY_TRUST_DSN``."""
    from trust._engine import TrustConfig

    if args.dsn:
        return TrustConfig.from_env(dsn=args.dsn)
    if args.state_dir:
        return TrustConfig.from_env(state_dir=args.state_dir, dsn=None)
    return TrustConfig.from_env()


def _with_store(
    body: Callable[[argparse.Namespace, TrustOps, str], Awaitable[None]],
) -> Callable[[argparse.Namespace], int]:
    """Run ``body`` against the store the options name; map refusals to exit codes."""

    def run(args: argparse.Namespace) -> int:
        async def main() -> None:
            from trust._engine_config import open_store

            config = _config(args)  # its canonicalizer: RELAY_TRUST_CASEFOLD_PLATFORMS (T5)
            store = await open_store(config)
            try:
                await body(args, TrustOps(store, None, config.canonicalizer), local_actor())
            finally:
                await store.aclose()

        try:
            trio.run(main)
        except TrustOpError as exc:
            if args.json:
                print(json.dumps({"error": exc.code, "message": exc.message}))
            _err(exc.message)
            return EXIT_USAGE if exc.code in _USAGE_CODES else EXIT_REFUSED
        except StoreError as exc:
            _err(str(exc))
            return EXIT_REFUSED
        except (TrustConfigError, PolicyError) as exc:
            _err(str(exc))
            return EXIT_USAGE
        return EXIT_OK

    return run


def _client_json(rec: Any) -> dict[str, object]:
    data = attrs.asdict(rec)
    data["level"] = rec.level.value
    data["effective_level"] = rec.effective_level
    return data


# --- store commands --------------------------------------------------------------------------


async def _list(args: argparse.Namespace, ops: TrustOps, actor: str) -> None:
    rows = await ops.list_clients(level=args.level, admins=args.admins, blocked=args.blocked)
    text = "\n".join(format_client(r) for r in rows) or "no clients"
    _out(args, text, [_client_json(r) for r in rows])


async def _show(args: argparse.Namespace, ops: TrustOps, actor: str) -> None:
    result = await ops.level(args.id, actor, tier=OPERATOR)
    _out(args, result.message, _client_json(result.client))


async def _promote(args: argparse.Namespace, ops: TrustOps, actor: str) -> None:
    result = await ops.promote(args.id, args.to, actor, args.reason, tier=OPERATOR)
    _out(args, result.message, {"message": result.message, "audit_id": result.audit_id})


async def _demote(args: argparse.Namespace, ops: TrustOps, actor: str) -> None:
    result = await ops.demote(args.id, args.to, actor, args.reason, tier=OPERATOR)
    _out(args, result.message, {"message": result.message, "audit_id": result.audit_id})


async def _block(args: argparse.Namespace, ops: TrustOps, actor: str) -> None:
    result = await ops.block(args.id, args.reason, actor, tier=OPERATOR)
    _out(args, result.message, {"message": result.message, "audit_id": result.audit_id})


async def _unblock(args: argparse.Namespace, ops: TrustOps, actor: str) -> None:
    result = await ops.unblock(args.id, actor, tier=OPERATOR)
    _out(args, result.message, {"message": result.message, "audit_id": result.audit_id})


async def _admin(args: argparse.Namespace, ops: TrustOps, actor: str) -> None:
    if args.admin_op == "set":
        result = await ops.set_admin(args.id, actor, tier=OPERATOR)
    else:
        result = await ops.remove_admin(args.id, actor, tier=OPERATOR)
    _out(args, result.message, {"message": result.message, "audit_id": result.audit_id})


async def _audit(args: argparse.Namespace, ops: TrustOps, actor: str) -> None:
    result, rows = await ops.audit(args.client, actor, args.limit, tier=OPERATOR)
    _out(args, result.message, [attrs.asdict(r) for r in rows])


async def _revert(args: argparse.Namespace, ops: TrustOps, actor: str) -> None:
    result = await ops.revert(args.audit_id, actor, tier=OPERATOR)
    _out(args, result.message, {"message": result.message, "audit_id": result.audit_id})


async def _invite(args: argparse.Namespace, ops: TrustOps, actor: str) -> None:
    if args.invite_op == "create":
        created = await ops.create_invite(
            actor,
            tier=OPERATOR,
            max_uses=args.max_uses,
            expires_in=args.expires,
            note=args.note,
            code=args.code,
        )
        inv = created.invite
        expiry = "never" if inv.expires_at is None else f"at {iso_utc(inv.expires_at)}"
        text = (
            f"invite {created.invite_id}: {created.code}\n"
            f"max uses {inv.max_uses}, expires {expiry}. The code is shown only this once."
        )
        _out(
            args,
            text,
            {
                "invite_id": created.invite_id,
                "code": created.code,
                "max_uses": inv.max_uses,
                "expires_at": inv.expires_at,
                "expires": iso_utc(inv.expires_at),
            },
        )
    elif args.invite_op == "list":
        invites = await ops.list_invites()
        now = ops.store.clock()
        lines = [
            f"{i.invite_id} {i.status(now)} uses {i.uses}/{i.max_uses} "
            f"expires {iso_utc(i.expires_at)} "
            f"by {i.created_by}{f' ({i.note})' if i.note else ''}"
            for i in invites
        ]
        data = [
            {k: v for k, v in attrs.asdict(i).items() if k != "code_sha256"}
            | {"status": i.status(now)}
            for i in invites
        ]
        _out(args, "\n".join(lines) or "no invites", data)
    else:
        result = await ops.revoke_invite(args.invite_id, actor, tier=OPERATOR)
        _out(args, result.message, {"message": result.message})


async def _import_co(args: argparse.Namespace, ops: TrustOps, actor: str) -> None:
    report, skipped = await import_co(
        ops.store,
        args.dir,
        platform=args.platform,
        dry_run=args.dry_run,
        overwrite=args.overwrite,
        canonicalizer=ops.canonicalizer,
    )
    verb = "would change" if args.dry_run else "changed"
    lines = [f"{verb} {len(report.changed)}, unchanged {len(report.unchanged)}"]
    lines += [f"  {cid}" for cid in report.changed]
    if report.conflicts:
        lines.append(
            f"conflicts (stored differently; --overwrite to replace): {len(report.conflicts)}"
        )
        lines += [f"  {cid}" for cid in report.conflicts]
    if skipped:
        lines.append(f"skipped {len(skipped)}:")
        lines += [f"  {s}" for s in skipped]
    _out(
        args,
        "\n".join(lines),
        {
            "changed": list(report.changed),
            "unchanged": list(report.unchanged),
            "conflicts": list(report.conflicts),
            "skipped": list(skipped),
            "audit_ids": list(report.audit_ids),
            "dry_run": args.dry_run,
        },
    )


# --- policy commands (no store) ---------------------------------------------------------------


def _policy_check(args: argparse.Namespace) -> int:
    try:
        policy = Policy.from_file(args.file)
    except PolicyError as exc:
        for item in exc.items:
            _err(str(item))
        return EXIT_USAGE
    except OSError as exc:
        _err(f"{args.file}: {exc.strerror or exc}")
        return EXIT_USAGE
    for warning in policy.warnings:
        _warn(str(warning))
    print(f"ok: policy {policy.name!r} (sha256 {policy.digest})")
    if policy.format == FORMAT_065 and policy.native_frontmatter:
        print("connectonion 0.6.5 policy; native translation:")
        print(policy.native_frontmatter.rstrip())
    return EXIT_OK


def _load_named(name: str) -> Policy:
    if name.strip().lower() in PRESETS:
        return load_preset(name)
    return Policy.from_file(name)


def _policy_show(args: argparse.Namespace) -> int:
    try:
        policy = _load_named(args.name)
    except (PolicyError, TrustConfigError, OSError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    print(f"policy {policy.name} (sha256 {policy.digest})")
    for number, line in enumerate(policy.describe_rules()):
        print(f"{number:>3}  {line}")
    return EXIT_OK


def _policy_copy(args: argparse.Namespace) -> int:
    preset = args.preset.strip().lower()
    if preset not in PRESETS:
        _err(f"unknown preset {args.preset!r}; presets are {', '.join(PRESETS)}")
        return EXIT_USAGE
    target = Path(args.path) if args.path else Path("policies") / f"{preset}.md"
    if target.exists() and not args.force:
        _err(f"{target} exists; use --force to overwrite")
        return EXIT_REFUSED
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(preset_text(preset))
    print(f"wrote {target}; run with --trust {target}")
    return EXIT_OK


# --- parser ----------------------------------------------------------------------------------


_DESCRIPTION: Final = """\
Inspect and change the trust store as the local operator (local:<OS user>), whom no
policy's disable list binds. The store is the gateway's: <state dir>/relay.db, or
PostgreSQL with --dsn / RELAY_TRUST_DSN.

exit status: 0 done, 1 refused or the store failed, 2 usage or policy error
"""
_ID_HELP: Final = "client id, PLATFORM:USER_ID (e.g. telegram:12345, discord:80351110224678912)"


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``trust`` command and its subcommands to ``subparsers``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir", metavar="DIR", help="state directory holding relay.db (env RELAY_STATE_DIR)"
    )
    common.add_argument(
        "--dsn",
        metavar="DSN",
        help="PostgreSQL DSN instead of relay.db (env RELAY_TRUST_DSN; needs the postgres extra)",
    )
    common.add_argument("--json", action="store_true", help="print the result as JSON")

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "trust",
        help="inspect and change trust state",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="trust_command",
        metavar="SUBCOMMAND",
        required=True,
        help="what to do (SUBCOMMAND --help for more)",
    )

    def add(name: str, help_text: str, body: Any = None) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help_text,
            description=help_text[:1].upper() + help_text[1:] + ".",
            parents=[common],
        )
        if body is not None:
            p.set_defaults(func=_with_store(body))
        return p

    p = add("list", "list stored clients", _list)
    p.add_argument(
        "--level", choices=("stranger", "contact", "whitelist"), help="only clients at this level"
    )
    p.add_argument("--admins", action="store_true", help="only admins")
    p.add_argument("--blocked", action="store_true", help="only blocked clients")
    add("show", "show one client's level, role and block", _show).add_argument("id", help=_ID_HELP)
    for name, body, levels in (
        ("promote", _promote, ("contact", "whitelist")),
        ("demote", _demote, ("contact", "stranger")),
    ):
        p = add(name, f"{name} a client one level (to {' or '.join(levels)})", body)
        p.add_argument("id", help=_ID_HELP)
        p.add_argument("--to", required=True, choices=levels, help="the new level, one step away")
        p.add_argument("--reason", help="why, for the audit log")
    p = add("block", "block a client (nothing it sends reaches the agent)", _block)
    p.add_argument("id", help=_ID_HELP)
    p.add_argument("--reason", required=True, help="why, for the audit log")
    add("unblock", "unblock a client", _unblock).add_argument("id", help=_ID_HELP)
    p = add("admin", "grant or remove the admin role", _admin)
    p.add_argument("admin_op", choices=("set", "remove"), help="set: grant; remove: take away")
    p.add_argument("id", help=_ID_HELP)
    p = add("invite", "create, list or revoke invite codes", _invite)
    isub = p.add_subparsers(
        dest="invite_op", metavar="ACTION", required=True, help="create, list or revoke"
    )
    c = isub.add_parser(
        "create",
        parents=[common],
        help="create an invite code (shown once)",
        description="Create an invite code; a stranger who sends /invite CODE becomes a contact.",
    )
    c.add_argument("--max-uses", type=int, default=1, help="how many may use it (default 1)")
    c.add_argument(
        "--expires", default="7d", help="lifetime: DURATION (90s, 12h, 7d; default 7d) or never"
    )
    c.add_argument("--note", help="a note shown by invite list")
    c.add_argument("--code", help="a custom code (at least 12 characters)")
    isub.add_parser(
        "list", parents=[common], help="list invites", description="List invites and their use."
    )
    r = isub.add_parser(
        "revoke", parents=[common], help="revoke an invite", description="Revoke an invite."
    )
    r.add_argument("invite_id", help="the invite's id, as invite list shows it")
    p = add("audit", "show the audit log, newest first", _audit)
    p.add_argument("--client", metavar="ID", help="only rows about this client")
    p.add_argument("--limit", type=int, default=20, help="at most this many rows (default 20)")
    add("revert", "undo one audit row", _revert).add_argument(
        "audit_id", type=int, help="the row's number, as audit shows it (#N)"
    )
    p = add("import-co", "import connectonion ~/.co list files", _import_co)
    p.add_argument("dir", help="the directory holding the list files (e.g. ~/.co)")
    p.add_argument("--platform", default="co", help="platform of the imported ids (default co)")
    p.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    p.add_argument(
        "--overwrite", action="store_true", help="replace clients stored with another level"
    )

    p = sub.add_parser(
        "policy",
        help="check, show or copy policies",
        description="Check, show or copy trust policies (no store needed).",
    )
    psub = p.add_subparsers(
        dest="policy_op", metavar="ACTION", required=True, help="check, show or copy"
    )
    pc = psub.add_parser(
        "check", help="validate a policy file", description="Validate a policy file."
    )
    pc.add_argument("file", help="the policy file (Markdown with front matter)")
    pc.set_defaults(func=_policy_check)
    ps = psub.add_parser(
        "show",
        help="print a policy's compiled rules",
        description="Print a policy's compiled rules.",
    )
    ps.add_argument("name", metavar="PRESET|PATH", help="a preset name or a policy file")
    ps.set_defaults(func=_policy_show)
    pp = psub.add_parser(
        "copy",
        help="copy a preset as a starting point",
        description="Copy a preset to a file you can edit.",
    )
    pp.add_argument("preset", choices=PRESETS, help="the preset to copy")
    pp.add_argument("path", nargs="?", help="where to write it (default policies/PRESET.md)")
    pp.add_argument("--force", action="store_true", help="overwrite an existing file")
    pp.set_defaults(func=_policy_copy)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``trust`` subcommands standalone (``python -m trust._cli``)."""
    parser = argparse.ArgumentParser(prog="relay-runtime")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["trust", *(sys.argv[1:] if argv is None else argv)])
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
