"""One gateway id, one serving process: a lease in PostgreSQL with a fencing token.

The lease is a row of ``relay_state_lease`` (gateway id, holder, token, expiry by the
server's clock). Taking it — only once it has expired or been released — adds one to its
token; the holder renews it every ``ttl/4`` and stops serving once ``ttl - ttl/4`` has
passed since the last renewal that worked, so it is gone before anyone else may take the
lease. Every state transaction checks the token (``_pg_schema.PgConnection``), so a
holder that was taken over cannot write. A process that finds the lease held waits as a
standby (one log line naming the holder) and polls; a released lease is taken within a
poll, a dead holder's within ``ttl`` plus a poll (10 s with the defaults).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import psycopg
import trio

from relay_runtime._state._pg_schema import connect
from relay_runtime._state._records import LeaseLost, StateError

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("relay_runtime.state")

T = TypeVar("T")

#: The default lease time: a dead holder is taken over within it plus one poll.
LEASE_TTL_S: Final = 8.0
#: A release at shutdown waits at most this long for the database.
RELEASE_WAIT_S: Final = 3.0


def holder_description() -> str:
    """Who holds a lease, for the standby's log line: host and pid (never a secret)."""
    return f"{socket.gethostname()} pid {os.getpid()}"


class LeaseSql:
    """The lease's statements, on a connection of its own (blocking: run in a thread)."""

    def __init__(self, dsn: str, gateway_id: str, location: str) -> None:
        self._dsn = dsn
        self.gateway_id = gateway_id
        self.location = location
        self._conn: psycopg.Connection[Any] | None = None

    def _live(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.broken or self._conn.closed:
            self.discard()
            self._conn = connect(self._dsn, self.location)
        return self._conn

    def take(self, holder: str, ttl_s: float) -> tuple[int | None, str, float]:
        """Take the lease if it is free: ``(token, holder, 0)``; else ``(None, holder,
        seconds it still runs)``."""
        conn = self._live()
        row = conn.execute(
            "INSERT INTO relay_state_lease AS l (gateway_id, holder, token, expires_at)"
            " VALUES (%s, %s, 1, clock_timestamp() + make_interval(secs => %s))"
            " ON CONFLICT (gateway_id) DO UPDATE SET holder = excluded.holder,"
            " token = l.token + 1, expires_at = excluded.expires_at"
            " WHERE l.expires_at <= clock_timestamp() RETURNING token",
            (self.gateway_id, holder, ttl_s),
        ).fetchone()
        if row is not None:
            return int(row[0]), holder, 0.0
        row = conn.execute(
            "SELECT holder, extract(epoch FROM expires_at - clock_timestamp())"
            " FROM relay_state_lease WHERE gateway_id = %s",
            (self.gateway_id,),
        ).fetchone()
        if row is None:  # released and deleted meanwhile: try again at once
            return None, "", 0.0
        return None, str(row[0]), max(0.0, float(row[1]))

    def renew(self, token: int, ttl_s: float) -> bool:
        """Extend the lease; False when ``token`` no longer holds it."""
        cur = self._live().execute(
            "UPDATE relay_state_lease SET expires_at = clock_timestamp()"
            " + make_interval(secs => %s) WHERE gateway_id = %s AND token = %s",
            (ttl_s, self.gateway_id, token),
        )
        return cur.rowcount == 1

    def release(self, token: int) -> None:
        """Give the lease up at once (a standby may take it at its next poll)."""
        self._live().execute(
            "UPDATE relay_state_lease SET expires_at = '-infinity'"
            " WHERE gateway_id = %s AND token = %s",
            (self.gateway_id, token),
        )

    def abandon(self) -> psycopg.Connection[Any] | None:
        """Forget the connection (an abandoned thread still uses it): returned to close."""
        conn, self._conn = self._conn, None
        return conn

    def discard(self) -> None:
        """Drop the connection (a call on it was abandoned, or it broke)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Lease:
    """This process's claim to serve one gateway id (see the module's docstring)."""

    def __init__(
        self,
        sql: LeaseSql,
        *,
        ttl_s: float = LEASE_TTL_S,
        holder: str | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise StateError(f"lease_ttl_s must be > 0, got {ttl_s!r}")
        self._sql = sql
        self.ttl_s = ttl_s
        self.renew_s = ttl_s / 4
        #: Serving stops this long before the lease could expire for the others.
        self.margin_s = ttl_s / 4
        self.poll_s = min(1.0, ttl_s / 8)
        self.holder = holder or holder_description()
        self.token: int | None = None
        self.lost_reason: str | None = None
        self._lost = trio.Event()
        self._renewed_at = 0.0

    @property
    def gateway_id(self) -> str:
        return self._sql.gateway_id

    def fence_token(self) -> int:
        """The token every state transaction must still find (from any thread)."""
        if self.token is None or self.lost_reason is not None:
            raise LeaseLost(f"the lease of gateway {self.gateway_id!r} is not held")
        return self.token

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a thread, given up at once when cancelled: its connection is
        then closed by that thread when the call ends, and the next call opens another."""
        lock = threading.Lock()
        ended = False
        abandoned: list[psycopg.Connection[Any]] = []

        def run() -> T:
            nonlocal ended
            try:
                return fn(*args)
            finally:
                with lock:
                    ended = True
                    for conn in abandoned:
                        conn.close()

        try:
            return await trio.to_thread.run_sync(run, abandon_on_cancel=True)
        except trio.Cancelled:
            conn = self._sql.abandon()
            with lock:
                if conn is not None:
                    if ended:
                        conn.close()
                    else:
                        abandoned.append(conn)
            raise

    async def acquire(self) -> None:
        """Take the lease, waiting as a standby while another process holds it.

        Cancellable at any point (a stop during standby ends at once). A database that
        cannot be reached at the first try raises :class:`StateError`; later, while
        waiting, it is retried every poll.
        """
        try:
            await self._acquire()
        except BaseException:
            self._sql.discard()  # not held: nothing to release, only the connection
            raise

    async def _acquire(self) -> None:
        began = trio.current_time()
        waiting_for: str | None = None
        first = True
        while True:
            asked = trio.current_time()
            try:
                token, holder, remaining = await self._call(self._sql.take, self.holder, self.ttl_s)
            except (psycopg.Error, StateError) as exc:
                if first:
                    raise StateError(
                        f"state database {self._sql.location!r}: cannot take the lease: {exc}"
                    ) from exc
                log.warning("relay: standby: the lease cannot be checked (%s); retrying", exc)
                await trio.sleep(self.poll_s)
                continue
            first = False
            if token is not None:
                self.token, self._renewed_at = token, asked
                if waiting_for is not None:
                    log.warning(
                        "relay: took over gateway %r from %s after %.1f s as standby"
                        " (lease token %d)",
                        self.gateway_id,
                        waiting_for,
                        trio.current_time() - began,
                        token,
                    )
                return
            if holder != waiting_for:
                waiting_for = holder
                log.warning(
                    "relay: standby: gateway %r is served by %s (lease runs %.1f s more);"
                    " waiting to take over",
                    self.gateway_id,
                    holder,
                    remaining,
                )
            # Until the lease runs out, but at most a poll (and not a busy loop near its end).
            await trio.sleep(max(min(self.poll_s, remaining), self.poll_s / 10))

    def mark_lost(self, reason: str) -> None:
        """The lease is gone: :meth:`keep` raises :class:`LeaseLost` (one ERROR)."""
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        log.error("relay: lost the lease of gateway %r: %s; stopping", self.gateway_id, reason)
        self._lost.set()

    async def keep(self) -> NoReturn:
        """Renew the held lease until it is lost; then raise :class:`LeaseLost`.

        A renewal that fails (database away) is retried every poll; once ``ttl - margin``
        has passed since the last one that worked, the lease counts as lost, before any
        other process could take it.
        """
        next_try = self._renewed_at + self.renew_s
        while not self._lost.is_set():
            valid_until = self._renewed_at + self.ttl_s - self.margin_s
            with trio.move_on_at(valid_until) as timer:
                with trio.move_on_at(next_try):
                    await self._lost.wait()
                if self._lost.is_set():
                    break
                asked = trio.current_time()
                try:
                    held = await self._call(self._sql.renew, self.fence_token(), self.ttl_s)
                except (psycopg.Error, StateError) as exc:
                    log.warning("relay: renewing the lease failed (%s); retrying", exc)
                    self._sql.discard()
                    next_try = trio.current_time() + self.poll_s
                    continue
                if not held:
                    self.mark_lost("another process took it over")
                    break
                self._renewed_at = asked
                next_try = asked + self.renew_s
            if timer.cancelled_caught:
                self.mark_lost(
                    f"not renewed for {self.ttl_s - self.margin_s:g} s (lease_ttl_s="
                    f"{self.ttl_s:g}); the database is unreachable"
                )
        raise LeaseLost(self.lost_reason or "lease lost")

    async def release(self) -> None:
        """Give the lease up so a standby takes over at once (bounded; idempotent)."""
        token, self.token = self.token, None
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_WAIT_S):
            try:
                if token is not None and self.lost_reason is None:
                    await self._call(self._sql.release, token)
                    log.info("relay: released the lease of gateway %r", self.gateway_id)
            except (psycopg.Error, StateError) as exc:
                log.warning("relay: releasing the lease failed (%s); it expires by itself", exc)
            finally:
                await trio.to_thread.run_sync(self._sql.discard)
