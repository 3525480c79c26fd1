"""The atomic functions of TR §2 as an async API over any :class:`~trust._store.base.ClientStore`.

Each call runs in one store transaction that re-reads the row under its lock and plans the
change with :mod:`trust._planning` (the pure half), so the precondition is always checked
on the row, never on a cache. Also the import of connectonion 0.6.5 list files.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Final

import attrs
import trio

from trust._identity import DEFAULT_CANONICALIZER, Canonicalizer, InvalidClientId
from trust._model import Level
from trust._planning import (
    ATOMIC_OPS as ATOMIC_OPS,
)
from trust._planning import (
    AtomicOp as AtomicOp,
)
from trust._planning import (
    Authority as Authority,
)
from trust._planning import (
    Planned as Planned,
)
from trust._planning import (
    as_atomic_op as as_atomic_op,
)
from trust._planning import (
    check_authority as check_authority,
)
from trust._planning import (
    clean_reason as clean_reason,
)
from trust._planning import (
    describe_state as describe_state,
)
from trust._planning import (
    plan as plan,
)
from trust._planning import (
    plan_revert as plan_revert,
)
from trust._planning import (
    revert_op as revert_op,
)
from trust._records import (
    AuditTier,
    ImportEntry,
    ImportReport,
    OpResult,
    TrustOpError,
)
from trust._records import (
    state_text as state_text,
)
from trust._store.base import ClientStore

# --- the public async API -----------------------------------------------------------------


async def promote_to_contact(
    store: ClientStore, client_id: str, *, actor: str, tier: AuditTier, reason: str | None = None
) -> OpResult:
    """Stranger → contact (TR §2)."""
    return await store.run_op(
        "promote_to_contact", client_id, actor=actor, tier=tier, reason=reason
    )


async def promote_to_whitelist(
    store: ClientStore, client_id: str, *, actor: str, tier: AuditTier, reason: str | None = None
) -> OpResult:
    """Contact → whitelist (TR §2)."""
    return await store.run_op(
        "promote_to_whitelist", client_id, actor=actor, tier=tier, reason=reason
    )


async def demote_to_contact(
    store: ClientStore, client_id: str, *, actor: str, tier: AuditTier, reason: str | None = None
) -> OpResult:
    """Whitelist → contact (TR §2)."""
    return await store.run_op("demote_to_contact", client_id, actor=actor, tier=tier, reason=reason)


async def demote_to_stranger(
    store: ClientStore, client_id: str, *, actor: str, tier: AuditTier, reason: str | None = None
) -> OpResult:
    """Contact → stranger; by a human also clears ``agent_may_promote`` (TR §2)."""
    return await store.run_op(
        "demote_to_stranger", client_id, actor=actor, tier=tier, reason=reason
    )


async def block(
    store: ClientStore, client_id: str, reason: str, *, actor: str, tier: AuditTier
) -> OpResult:
    """Flag the client blocked, keeping its level (TR §2)."""
    return await store.run_op("block", client_id, actor=actor, tier=tier, reason=reason)


async def unblock(
    store: ClientStore, client_id: str, *, actor: str, tier: AuditTier, reason: str | None = None
) -> OpResult:
    """Clear the block; the level shows again (TR §2)."""
    return await store.run_op("unblock", client_id, actor=actor, tier=tier, reason=reason)


async def set_admin(
    store: ClientStore, client_id: str, *, by_admin: str, tier: AuditTier
) -> OpResult:
    """Grant the admin role; ``by_admin`` must be an admin or the local operator."""
    return await store.run_op("set_admin", client_id, actor=by_admin, tier=tier, reason=None)


async def remove_admin(
    store: ClientStore, client_id: str, *, by_admin: str, tier: AuditTier
) -> OpResult:
    """Remove the admin role; never the last admin unless by the local operator."""
    return await store.run_op("remove_admin", client_id, actor=by_admin, tier=tier, reason=None)


# --- import of connectonion 0.6.5 list files ----------------------------------------------

CO_LIST_FILES: Final = ("whitelist.txt", "contacts.txt", "blocklist.txt", "admins.txt")


@attrs.frozen
class CoImportPlan:
    """What a ``~/.co`` directory holds: the wanted state per client, and skipped lines."""

    entries: tuple[ImportEntry, ...]
    skipped: tuple[str, ...]


def read_co_lists(
    directory: str | os.PathLike[str],
    *,
    platform: str = "co",
    canonicalizer: Canonicalizer = DEFAULT_CANONICALIZER,
) -> CoImportPlan:
    """Read the four 0.6.5 list files (blocking I/O; run it in a thread).

    A missing file is empty; an unreadable one aborts the import with ``unreadable``
    (T26). ``*`` lines and invalid ids are skipped and listed, never imported (T27).
    Precedence as in 0.6.5: blocked from the blocklist; level whitelist, else contact,
    else stranger; admin from ``admins.txt``.
    """
    base = Path(directory)
    lists: dict[str, set[str]] = {}
    skipped: list[str] = []
    for name in CO_LIST_FILES:
        path = base / name
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise TrustOpError(
                "unreadable", f"{path}: {exc.__class__.__name__}; nothing imported"
            ) from None
        ids: set[str] = set()
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "*" in line:
                skipped.append(f"{name}:{number}: {line!r}: patterns are not imported")
                continue
            try:
                ids.add(canonicalizer.client_id(platform, line))
            except InvalidClientId as exc:
                skipped.append(f"{name}:{number}: {exc}")
        lists[name] = ids
    entries = []
    for cid in sorted(set().union(*lists.values())):
        level = (
            Level.WHITELIST
            if cid in lists["whitelist.txt"]
            else Level.CONTACT
            if cid in lists["contacts.txt"]
            else Level.STRANGER
        )
        entries.append(
            ImportEntry(
                client_id=cid,
                level=level,
                blocked=cid in lists["blocklist.txt"],
                is_admin=cid in lists["admins.txt"],
            )
        )
    return CoImportPlan(tuple(entries), tuple(skipped))


async def import_co(
    store: ClientStore,
    directory: str | os.PathLike[str],
    *,
    platform: str = "co",
    dry_run: bool = False,
    overwrite: bool = False,
    canonicalizer: Canonicalizer = DEFAULT_CANONICALIZER,
) -> tuple[ImportReport, tuple[str, ...]]:
    """Import a ``~/.co`` directory in one transaction, actor ``import:<dir>``."""
    plan_ = await trio.to_thread.run_sync(
        functools.partial(read_co_lists, directory, platform=platform, canonicalizer=canonicalizer)
    )
    report = await store.import_states(
        plan_.entries, actor=f"import:{directory}", overwrite=overwrite, dry_run=dry_run
    )
    return report, plan_.skipped
