"""Gateway sockets as the connector saw them: when each was live, and which posts it carried.

The connector process journals every socket's ``accept`` and ``close`` in the order they
happened (``connector_proc.py``), its first ``hello``, and the connection of each ``outbound``
and ``post``. From that this module answers what the failover scenarios assert: how many
sockets one gateway id had live at once (the lease promises one), how long after a kill the
next socket came (the takeover), and which connection posted a reply.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = ["Socket", "most_live", "posted_on", "sockets", "takeover_s"]


@attrs.frozen
class Socket:
    """One accepted gateway socket: its connection id, gateway id, and wall-clock times."""

    conn: str
    gateway_id: str
    accepted_at: float
    hello_at: float | None = None
    closed_at: float | None = None


def sockets(records: Iterable[Mapping[str, Any]]) -> list[Socket]:
    """Every socket the journal saw accepted, in accept order (closed or still open)."""
    found: dict[str, Socket] = {}
    for rec in records:
        ev = rec["ev"]
        if ev == "accept":
            found[rec["conn"]] = Socket(rec["conn"], rec["gid"], rec["t"])
        elif ev == "hello" and rec["conn"] in found:
            found[rec["conn"]] = attrs.evolve(found[rec["conn"]], hello_at=rec["t"])
        elif ev == "close" and rec["conn"] in found:
            found[rec["conn"]] = attrs.evolve(found[rec["conn"]], closed_at=rec["t"])
    return list(found.values())


def most_live(records: Iterable[Mapping[str, Any]], gateway_id: str) -> int:
    """The most sockets of ``gateway_id`` open at one moment, swept in journal order.

    Journal order is the order the connector accepted and closed them (one process, one
    writer), so equal or skewed time stamps cannot hide an overlap. A connector killed
    with its sockets open journals no close for them; its restart (``start``) ends them.
    """
    live: set[str] = set()
    most = 0
    for rec in records:
        if rec["ev"] == "accept" and rec["gid"] == gateway_id:
            live.add(rec["conn"])
            most = max(most, len(live))
        elif rec["ev"] == "close":
            live.discard(rec["conn"])
        elif rec["ev"] == "start":  # a new connector process: the last one's sockets died
            live.clear()
    return most


def takeover_s(found: Iterable[Socket], gateway_id: str, killed_at: float) -> float | None:
    """Seconds from ``killed_at`` to the first socket of ``gateway_id`` accepted after it."""
    after = [
        s.accepted_at for s in found if s.gateway_id == gateway_id and s.accepted_at > killed_at
    ]
    return min(after) - killed_at if after else None


def posted_on(records: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    """The connection each performed ``requestId`` was posted on (first post wins)."""
    found: dict[str, str | None] = {}
    for rec in records:
        if rec["ev"] == "post":
            found.setdefault(rec["rid"], rec.get("conn"))
    return found
