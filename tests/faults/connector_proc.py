"""The reference connector in its own process, injecting a scripted schedule and journaling.

Run as ``python tests/faults/connector_proc.py --journal FILE --count N ...`` (the secret in
``$FAULT_SECRET``). It serves the real :class:`~relay_runtime.connector.ReferenceConnector`
on 127.0.0.1, prints its ``ws://`` base URL as the first line of standard output, waits for
the gateway's first handshake, then injects messages ``msg 0`` .. ``msg N-1`` (each in chat
``c<n % 64>``, platform message id ``m<n>``) at ``--rate`` per second, or all at once with
``--rate 0``, live or through the ack-gated buffer as ``--mode`` says. Everything it does
goes to the journal (see ``fault_journal.py``). SIGTERM/SIGINT stop the process.

Commands on standard input, one per line: ``hold`` holds the schedule (the journal says
``held`` before the next message would go out), ``resume`` lets it go on; ``gate`` leaves every
later ``send`` unanswered (journal: ``gated``), so replies stay pending; ``open`` answers sends
again (journal: ``opened``); ``lose-acks`` journals every later ``inbound_ack`` as ``ack-lost``
instead of ``ack`` (the connector still honours it in memory, so only a restart, which
reloads the buffer from the journal, brings those deliveries back: acks a crash lost).

Every gateway socket's accept and close is journaled (``accept`` / ``close``, with the
connection id and gateway id) at the moment the connector logs it, in the order it happened,
so a test can tell how many sockets per gateway id were live at any moment; ``hello`` marks
a connection's first ``hello``, ``outbound`` and ``post`` records name their connection.

Restarted with the same journal (and ``--port``), it reloads what a durable connector keeps:
the un-acked buffered deliveries under their old ``bufferId``s and the ``requestId``s it
already performed (its dedupe memory), then goes on with the schedule where it stopped. A
message delivered live whose journal line the crash prevented is injected again, as a
platform redelivers; the gateway's ``K_msg`` dedupe is what must cope with that.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import attrs
import trio

# Run as a script: make the suite's own modules importable next to the package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_journal import (
    Journal,
    SocketJournal,
    connection_key,
    message,
    message_number,
    read_records,
)

from protocol import GoingIdle, Hello, Inbound, InboundAck, Outbound
from relay_runtime.connector import (
    Connection,
    NoAnswer,
    Post,
    ReferenceConnector,
    Succeed,
)
from relay_runtime.connector._buffer import BufferedFrame


@attrs.define
class Acks:
    """Whether received acks are journaled as lost (``lose-acks``)."""

    lose: bool = False


@attrs.define
class Hold:
    """``hold`` stops the schedule before its next message; ``resume`` lets it go on."""

    held: bool = False
    resumed: trio.Event = attrs.field(factory=trio.Event)

    def hold(self) -> None:
        if not self.held:
            self.held = True
            self.resumed = trio.Event()

    def resume(self) -> None:
        self.held = False
        self.resumed.set()


def buffered_mode(mode: str, n: int) -> bool:
    """Whether message ``n`` goes through the buffer even with a gateway connected."""
    return mode == "buffered" or (mode == "mixed" and n % 2 == 1)


async def main(args: argparse.Namespace) -> None:
    path = Path(args.journal)
    past = read_records(path)
    incarnation = 1 + sum(1 for r in past if r["ev"] == "start")
    next_n = 1 + max((r["n"] for r in past if r["ev"] == "deliver"), default=-1)
    acked = {r["bid"] for r in past if r["ev"] == "ack"}
    unacked = [
        (r["bid"], r["n"])
        for r in past
        if r["ev"] == "deliver" and r["mode"] == "buffered" and r["bid"] not in acked
    ]
    # What the connector answered when it performed each requestId (an edit has no id).
    performed = {
        r["rid"]: {"success": True}
        if r["op"] == "edit"
        else {"success": True, "message_id": r["mid"]}
        for r in past
        if r["ev"] == "post"
    }

    journal = Journal(path)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    connector_log = logging.getLogger("relay.connector")
    connector_log.setLevel(logging.INFO)
    connector_log.addHandler(SocketJournal(journal, incarnation))
    gid = args.gateway_id
    connector = ReferenceConnector(
        secrets={gid: os.environ["FAULT_SECRET"]}, drain_window=args.drain_window
    )
    restored: list[tuple[str, BufferedFrame]] = [
        (bid, Inbound(event=message(n))) for bid, n in unacked
    ]
    connector.restore(gid, buffered=restored, performed=list(performed.items()))
    performed_ids = set(performed)

    def key(conn_id: int) -> str:
        return connection_key(incarnation, conn_id)

    # The connection each requestId last came on: a post follows its outbound frame.
    asked_on: dict[str, str] = {}

    def on_outbound(conn: Connection, frame: Outbound) -> None:
        asked_on[frame.request_id] = key(conn.id)
        content = getattr(frame.action, "content", None)
        journal.write(
            "outbound",
            rid=frame.request_id,
            op=frame.action.OP,
            repeat=frame.request_id in performed_ids,
            conn=key(conn.id),
            n=message_number(content) if isinstance(content, str) else None,
        )

    def on_post(post: Post) -> None:
        # Called as the connector performs the action, before it answers the gateway.
        performed_ids.add(post.request_id)
        journal.write(
            "post",
            rid=post.request_id,
            op=post.op,
            chat=post.chat_id,
            content=post.content,
            mid=post.message_id,
            conn=asked_on.get(post.request_id),
        )

    connector.on_outbound = on_outbound
    connector.journal_sink = on_post

    acks = Acks()

    async def watch_frames() -> None:
        got = wrote = 0
        greeted: set[int] = set()
        while True:
            await connector.wait_for(
                lambda got=got, wrote=wrote: (
                    len(connector.received) > got or len(connector.sent) > wrote
                )
            )
            for rec in connector.received[got:]:
                if isinstance(rec.frame, InboundAck):
                    journal.write("ack-lost" if acks.lose else "ack", bid=rec.frame.buffer_id)
                elif isinstance(rec.frame, Hello) and rec.connection_id not in greeted:
                    greeted.add(rec.connection_id)
                    journal.write("hello", conn=key(rec.connection_id))
                elif isinstance(rec.frame, GoingIdle):
                    journal.write("idle", conn=key(rec.connection_id))
            for sent in connector.sent[wrote:]:
                if isinstance(sent.frame, Inbound) and sent.frame.buffer_id is not None:
                    journal.write("push", bid=sent.frame.buffer_id, conn=key(sent.connection_id))
            got, wrote = len(connector.received), len(connector.sent)

    hold = Hold()

    async def inject_schedule() -> None:
        if next_n == 0:
            await connector.wait_connected(gid)
        next_at = trio.current_time()
        for n in range(next_n, args.count):
            if args.rate > 0:
                await trio.sleep_until(next_at)
                next_at += 1 / args.rate
            if hold.held:
                journal.write("held", next=n)
                await hold.resumed.wait()
                journal.write("resumed", next=n)
                next_at = trio.current_time()
            connector.always_buffer = buffered_mode(args.mode, n)
            delivery = await connector.inject(message(n), gateway_id=gid)
            journal.write("deliver", n=n, mode=delivery.outcome, bid=delivery.buffer_id)
            await trio.lowlevel.checkpoint()
        journal.write("done", count=args.count)

    async def obey_commands() -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        pending = b""
        while chunk := await stdin.receive_some(4096):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                command = line.decode().strip()
                if command == "hold":
                    hold.hold()
                elif command == "resume":
                    hold.resume()
                elif command == "gate":
                    connector.outcomes.set("send", NoAnswer())
                    journal.write("gated")
                elif command == "open":
                    connector.outcomes.set("send", Succeed())
                    journal.write("opened")
                elif command == "lose-acks":
                    acks.lose = True
                    journal.write("losing-acks")
                else:
                    raise ValueError(f"unknown command {command!r} on standard input")

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(connector.serve, "127.0.0.1", args.port)
            journal.write(
                "start",
                incarnation=incarnation,
                port=connector.port,
                pid=os.getpid(),
                next=next_n,
                restored=len(restored),
                remembered=len(performed),
            )
            print(connector.base_url, flush=True)
            del url
            nursery.start_soon(watch_frames)
            nursery.start_soon(inject_schedule)
            nursery.start_soon(obey_commands)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    journal.close()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--journal", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gateway-id", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--mode", choices=("live", "buffered", "mixed"), default="live")
    parser.add_argument("--rate", type=float, default=100.0, help="messages/s; 0 = all at once")
    parser.add_argument("--drain-window", type=int, default=64)
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse())
