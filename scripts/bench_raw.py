"""The protocol-equivalent raw baseline, paired with the pipeline in one run (issue 15).

The pipeline's per-message frame exchange is four frames: the connector sends ``inbound``
(with a ``bufferId``), the gateway answers ``outbound`` (a ``send``), the connector answers
``outbound_result``, and the gateway acks with ``inbound_ack``. This module measures that
exchange twice, in the same run, alternating, ``--reps`` times:

* **pipeline** — :func:`bench_pipeline.pipeline` with every delivery through the connector's
  ack-gated buffer (``always_buffer``, ``drain_window`` = the in-flight window), so every
  message really carries a ``bufferId`` and is acked after its turn is recorded: the reference
  connector in this process, ``run_gateway`` (echo agent, trust ``careful``) in a child.
* **raw** — a bare trio-websocket server in this process (the connector's role) and a bare
  client in a child process (the gateway's role) doing exactly those four frames, with frames
  made by the real codec as templates (same bytes; only the 9-digit sequence number in them
  changes), the same in-flight window (:data:`bench_pipeline.SATURATION_WINDOW` until the
  ``outbound``, the same number un-acked), the same open-loop driver.
* **raw websockets.trio** (reference, optional) — the same client on ``websockets.trio``
  (the server stays trio-websocket); skipped with a note when websockets >= 17 is missing.

A message is complete when its ``outbound`` reaches the connector side (as in every pipeline
figure). CPU per message comes from the processes' own CPU time over each saturation run:
``/proc/<pid>/stat`` (utime + stime, every thread) for the child (gateway, raw client) and
``time.process_time()`` for this process (connector or raw server — plus the same open-loop
driver in both cases). The headline is one line ``pipeline/raw ratio X``: the median over
repetitions of pipeline msg/s over raw msg/s in the same repetition.

    python scripts/bench_raw.py [--reps 3] [--count 3000] [--trust careful] [--json]

Loopback only; every child process is stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))

import bench_pipeline as bp

from protocol import Hello, Inbound, InboundAck, Outbound, OutboundResult, Send, encode_frame

SCRIPT: Final = Path(__file__).resolve()
#: Issue 15's acceptance: pipeline msg/s over the raw exchange's, at saturation.
TARGET_RATIO: Final = 0.50
PIPELINE: Final = "pipeline"
CONNECTOR: Final = "connector + raw client"
RAW_TW: Final = "raw trio-websocket"
RAW_WS: Final = "raw websockets.trio"
TRIO_WEBSOCKET: Final = "trio-websocket"
WEBSOCKETS: Final = "websockets.trio"
#: The 9-digit placeholder every template carries where a message's sequence number goes.
MARK: Final = "123456789"
WARMUP: Final = 300
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- frame templates


@attrs.frozen
class Templates:
    """The four frames of one message, as the real codec writes them, split at :data:`MARK`.

    ``render(kind, seq)`` joins a template's pieces with the 9-digit ``seq``: the frame a
    pipeline message ``seq`` would have, byte for byte the same length.
    """

    inbound: tuple[str, ...]
    outbound: tuple[str, ...]
    result: tuple[str, ...]
    ack: tuple[str, ...]
    #: Where the sequence number starts in an ``outbound`` and an ``outbound_result``.
    outbound_at: int
    result_at: int

    @classmethod
    def build(cls) -> Templates:
        """Encode one message's frames with :data:`MARK` as its number (session 7)."""
        seq = int(MARK)
        buffer_id = f"buf-0a1b2c3d-{MARK}"
        request_id = f"00000000-0000-4000-8000-000{MARK}"
        frames = (
            encode_frame(Inbound(event=bp.make_event(seq, 7), buffer_id=buffer_id)),
            encode_frame(
                Outbound(
                    request_id=request_id,
                    action=Send(chat_id="chat-7", content=bp.payload_text(seq)),
                    platform=bp.PLATFORM,
                )
            ),
            encode_frame(
                OutboundResult(
                    request_id=request_id, result={"success": True, "message_id": f"m-{MARK}"}
                )
            ),
            encode_frame(InboundAck(buffer_id=buffer_id)),
        )
        inbound, outbound, result, ack = (tuple(f.split(MARK)) for f in frames)
        return cls(inbound, outbound, result, ack, len(outbound[0]), len(result[0]))

    @staticmethod
    def render(pieces: tuple[str, ...], seq: int) -> str:
        """The template ``pieces`` with ``seq`` (9 digits) wherever :data:`MARK` was."""
        return f"{seq:09d}".join(pieces)

    def sizes(self) -> dict[str, int]:
        """Bytes of each of the four frames."""
        return {
            name: len(self.render(getattr(self, name), 1).encode())
            for name in ("inbound", "outbound", "result", "ack")
        }


# --------------------------------------------------------------------------- CPU time


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) that process ``pid`` has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may hold spaces) start at state, field 3.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@attrs.frozen
class Sample:
    """One saturation run of one stack: its figures and both sides' CPU seconds."""

    stack: str
    rep: int
    run: bp.RunResult
    #: CPU of the gateway (or raw client) child and of this process (connector, raw server).
    child_cpu_s: float
    local_cpu_s: float

    def child_us(self) -> float:
        """Child CPU µs per completed message."""
        return self.child_cpu_s / max(1, self.run.completed) * 1e6

    def local_us(self) -> float:
        """This process's CPU µs per completed message."""
        return self.local_cpu_s / max(1, self.run.completed) * 1e6


async def timed_run(
    stack: str,
    rep: int,
    pid: int,
    send: Callable[[int], Awaitable[None]],
    tracker: bp.Tracker,
    first_seq: int,
    count: int,
) -> Sample:
    """One saturation run of ``count`` messages, with both processes' CPU around it."""
    child_before, local_before = process_cpu_s(pid), time.process_time()
    run = await bp.drive(stack, send, tracker, first_seq=first_seq, rate=None, count=count)
    child_cpu, local_cpu = process_cpu_s(pid) - child_before, time.process_time() - local_before
    bp.progress(run)
    return Sample(stack, rep, run, child_cpu, local_cpu)


# --------------------------------------------------------------------------- raw peers


class RawServer:
    """The connector's side of the raw exchange on one accepted socket.

    ``send(seq)`` writes message ``seq``'s ``inbound`` once fewer than ``window`` are un-acked;
    each ``outbound`` completes its message in the tracker and is answered with its
    ``outbound_result``; each ``inbound_ack`` frees a slot of the window.
    """

    def __init__(self, templates: Templates, tracker: bp.Tracker, window: int) -> None:
        self.templates = templates
        self.tracker = tracker
        self.window = window
        self.unacked = 0
        self.acks = 0
        self._room = trio.Event()
        self.ws: WebSocketConnection | None = None

    async def send(self, seq: int) -> None:
        """Write message ``seq``'s ``inbound`` (waits for room in the ack window)."""
        while self.unacked >= self.window:
            await self._room.wait()
        self.unacked += 1
        assert self.ws is not None
        await self.ws.send_message(Templates.render(self.templates.inbound, seq))

    async def serve(self, ws: WebSocketConnection) -> None:
        """Read the client's frames until the socket closes."""
        t = self.templates
        outbound_prefix = t.outbound[0]
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = await ws.get_message()
                text = message if isinstance(message, str) else message.decode()
                if text.startswith(outbound_prefix):
                    seq = int(text[t.outbound_at : t.outbound_at + 9])
                    self.tracker.complete(seq)
                    await ws.send_message(Templates.render(t.result, seq))
                else:  # inbound_ack
                    self.unacked -= 1
                    self.acks += 1
                    self._room.set()
                    self._room = trio.Event()


async def exchange(
    receive: Callable[[], Awaitable[str | bytes]], send: Callable[[str], Awaitable[None]]
) -> None:
    """The raw client's loop (the gateway's role), the same for both libraries and servers.

    An ``inbound`` is answered with its ``outbound`` (the message's number sits at a fixed
    offset in its text; its ``bufferId`` ends the frame and is kept by number); an
    ``outbound_result`` with the ``inbound_ack`` for that ``bufferId``. No JSON parsing.
    """
    t = Templates.build()
    inbound_at = len(t.inbound[0])
    inbound_prefix = t.inbound[0][:16]
    ack_head, ack_tail = '{"type":"inbound_ack","bufferId":"', '"}\n'
    buffer_ids: dict[int, str] = {}
    while True:
        message = await receive()
        text = message if isinstance(message, str) else message.decode()
        if text.startswith(inbound_prefix):
            seq = int(text[inbound_at : inbound_at + 9])
            buffer_ids[seq] = text[text.rindex('"bufferId":"') + 12 : text.rindex('"')]
            await send(Templates.render(t.outbound, seq))
        else:
            seq = int(text[t.result_at : t.result_at + 9])
            await send(ack_head + buffer_ids.pop(seq) + ack_tail)


async def client_main(library: str, url: str, hello: bool) -> None:
    """Child: dial ``url`` with ``library`` (no compression) and run :func:`exchange`.

    With ``hello`` (a real connector) it first says ``hello`` and waits for the descriptor.
    """
    opening = encode_frame(Hello(platform=bp.PLATFORM, bot_id="bench")) if hello else None
    if library == TRIO_WEBSOCKET:
        async with open_websocket_url(url) as tw:
            with contextlib.suppress(ConnectionClosed):
                if opening is not None:
                    await tw.send_message(opening)
                    await tw.get_message()
                await exchange(tw.get_message, tw.send_message)
    else:
        from websockets.exceptions import ConnectionClosed as WsClosed
        from websockets.trio.client import connect

        async with connect(url, compression=None, proxy=None) as ws:
            with contextlib.suppress(WsClosed):
                if opening is not None:
                    await ws.send(opening)
                    await ws.recv()
                await exchange(ws.recv, ws.send)


def websockets_trio_missing() -> str | None:
    """Why the websockets.trio reference cannot run here, or None when it can."""
    try:
        major = importlib.metadata.version("websockets").split(".")[0]
    except importlib.metadata.PackageNotFoundError:
        return "websockets is not installed (pip install 'relay-runtime[bench]')"
    if not (major.isdigit() and int(major) >= 17):
        return f"websockets {major} has no websockets.trio (needs >= 17)"
    return None


@attrs.define
class Peer:
    """A running stack: how to send message ``seq``, its tracker, and its child's pid."""

    stack: str
    send: Callable[[int], Awaitable[None]]
    tracker: bp.Tracker
    pid: int
    next_seq: int = 1
    #: Called as ``prepare(first_seq, count)`` before a timed run, outside its CPU window.
    prepare: Callable[[int, int], None] | None = None


@contextlib.asynccontextmanager
async def raw_peer(stack: str, library: str, window: int) -> AsyncIterator[Peer]:
    """A raw server here and a ``library`` client child dialled into it, warmed up."""
    tracker = bp.Tracker()
    server = RawServer(Templates.build(), tracker, window)
    accepted = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        server.ws = ws
        accepted.set()
        await server.serve(ws)

    async with trio.open_nursery() as nursery:
        listener = await nursery.start(serve_websocket, handler, bp.HOST, 0, None)
        url = f"ws://{bp.HOST}:{listener.port}/raw"
        argv = [sys.executable, os.fspath(SCRIPT), "client", "--library", library, "--url", url]
        with bp.child(argv) as proc:
            with trio.fail_after(bp.START_TIMEOUT_S):
                await accepted.wait()
            peer = Peer(stack, server.send, tracker, proc.pid)
            await bp.drive("warmup", peer.send, tracker, first_seq=1, rate=None, count=WARMUP)
            peer.next_seq = WARMUP + 1
            yield peer
            assert server.ws is not None
            await server.ws.aclose()
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def pipeline_peer(trust: str, window: int) -> AsyncIterator[Peer]:
    """The gateway child and the reference connector, every delivery ack-gated, warmed up."""
    async with bp.pipeline(trust, always_buffer=True, drain_window=window) as (bench, proc):
        peer = Peer(PIPELINE, bench.inject, bench.tracker, proc.pid)
        await bp.drive("warmup", peer.send, peer.tracker, first_seq=1, rate=None, count=WARMUP)
        bench.trim()
        peer.next_seq = WARMUP + 1
        yield peer
        bench.trim()


@contextlib.asynccontextmanager
async def connector_peer(window: int) -> AsyncIterator[Peer]:
    """The reference connector here (every delivery ack-gated) and the raw client child.

    The same client as :func:`raw_peer`'s, so the two differ only in the server: the
    connector's CPU per message against the raw server's is the connector's own overhead.
    The events are built before each timed run (``prepare``): making a ``MessageEvent`` is
    its caller's work, not the connector's.
    """
    from relay_runtime.connector import DEFAULT_KEEP_RECORDS, ReferenceConnector

    tracker = bp.Tracker()
    events: dict[int, Any] = {}

    def observe(conn: Any, frame: Outbound) -> None:
        content = getattr(frame.action, "content", "")
        tracker.complete(int(content[1:10]))

    connector = ReferenceConnector(
        allow_unauthenticated=True,
        always_buffer=True,
        drain_window=window,
        on_outbound=observe,
        keep_records=DEFAULT_KEEP_RECORDS,  # as the connector CLI keeps them
    )

    def prepare(first_seq: int, count: int) -> None:
        events.clear()
        connector.clear_records()
        connector.clear_messages()
        for seq in range(first_seq, first_seq + count):
            events[seq] = bp.make_event(seq, seq % bp.SESSIONS)

    async def send(seq: int) -> None:
        await connector.inject(events.pop(seq), gateway_id="")

    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, bp.HOST, 0)
        argv = [sys.executable, os.fspath(SCRIPT), "client", "--library", TRIO_WEBSOCKET,
                "--url", connector.url, "--hello"]  # fmt: skip
        with bp.child(argv) as proc:
            with trio.fail_after(bp.START_TIMEOUT_S):
                await connector.wait_connected("")
            peer = Peer(CONNECTOR, send, tracker, proc.pid, prepare=prepare)
            prepare(1, WARMUP)
            await bp.drive("warmup", send, tracker, first_seq=1, rate=None, count=WARMUP)
            peer.next_seq = WARMUP + 1
            yield peer
            await connector.drop("", code=1000, reason="bench done")
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the paired run


@attrs.frozen
class Summary:
    """Medians and ranges over repetitions for one stack."""

    stack: str
    reps: int
    rate: tuple[float, float, float]  # median, min, max msg/s
    child_us: tuple[float, float, float]
    local_us: tuple[float, float, float]
    sent: int
    lost: int


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of ``values``."""
    return statistics.median(values), min(values), max(values)


def summarise(samples: Sequence[Sample]) -> list[Summary]:
    """One :class:`Summary` per stack, in first-seen order."""
    stacks = list(dict.fromkeys(s.stack for s in samples))
    out = []
    for stack in stacks:
        mine = [s for s in samples if s.stack == stack]
        out.append(
            Summary(
                stack,
                len(mine),
                spread([s.run.throughput for s in mine]),
                spread([s.child_us() for s in mine]),
                spread([s.local_us() for s in mine]),
                sum(s.run.sent for s in mine),
                sum(s.run.lost for s in mine),
            )
        )
    return out


def ratios(samples: Sequence[Sample], over: str = RAW_TW, stack: str = PIPELINE) -> list[float]:
    """``stack`` msg/s over ``over`` msg/s, per repetition that has both."""
    by_rep: dict[tuple[str, int], float] = {(s.stack, s.rep): s.run.throughput for s in samples}
    reps = sorted({s.rep for s in samples})
    return [
        by_rep[stack, r] / by_rep[over, r]
        for r in reps
        if (stack, r) in by_rep and by_rep.get((over, r))
    ]


def headline_ratio(samples: Sequence[Sample]) -> float:
    """The median pipeline/raw ratio over repetitions (NaN without a paired repetition)."""
    values = ratios(samples)
    return statistics.median(values) if values else math.nan


def ratio_line(samples: Sequence[Sample]) -> str:
    """The headline: ``pipeline/raw ratio X`` (median over repetitions, with its range)."""
    values = ratios(samples)
    if not values:
        return "pipeline/raw ratio n/a (no paired repetition)"
    mid, lo, hi = spread(values)
    return (
        f"pipeline/raw ratio {mid:.2f} "
        f"(median of {len(values)} paired runs, range {lo:.2f}-{hi:.2f})"
    )


def table(samples: Sequence[Sample]) -> str:
    """Per-stack medians and ranges: msg/s, child CPU and local CPU per message."""

    def fmt(v: tuple[float, float, float], digits: int = 0) -> str:
        return f"{v[0]:,.{digits}f} ({v[1]:,.{digits}f}-{v[2]:,.{digits}f})"

    head = (
        f"{'stack':<24} {'reps':>4} {'msg/s median (range)':>24} "
        f"{'gateway/client CPU µs/msg':>27} {'connector/server CPU µs/msg':>29} {'lost':>5}"
    )
    lines = [head, "-" * len(head)]
    lines.extend(
        f"{s.stack:<24} {s.reps:>4} {fmt(s.rate):>24} {fmt(s.child_us):>27} "
        f"{fmt(s.local_us):>29} {s.lost:>5}"
        for s in summarise(samples)
    )
    return "\n".join(lines)


def cpu_lines(samples: Sequence[Sample]) -> list[str]:
    """CPU per message of one stack over another's, per repetition (median and range)."""
    lines = []
    for label, stack, pick in (
        ("connector/raw server (same raw client)", CONNECTOR, Sample.local_us),
        ("connector/raw server (pipeline's connector)", PIPELINE, Sample.local_us),
        ("gateway/raw client", PIPELINE, Sample.child_us),
    ):
        by = {(s.stack, s.rep): pick(s) for s in samples}
        values = [
            by[stack, r] / by[RAW_TW, r]
            for r in sorted({s.rep for s in samples})
            if (stack, r) in by and by.get((RAW_TW, r))
        ]
        if values:
            mid, lo, hi = spread(values)
            lines.append(f"CPU per message {label}: {mid:.2f}x (range {lo:.2f}-{hi:.2f})")
    return lines


async def paired(
    reps: int, count: int, trust: str = "careful", *, websockets: bool = True
) -> list[Sample]:
    """``reps`` repetitions of pipeline and raw saturation runs; the order alternates."""
    window = bp.SATURATION_WINDOW
    note = websockets_trio_missing() if websockets else "not asked for"
    if note is not None and websockets:
        print(f"  websockets.trio reference skipped: {note}", file=sys.stderr, flush=True)
    samples: list[Sample] = []
    async with contextlib.AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(pipeline_peer(trust, window))]
        peers.append(await stack.enter_async_context(raw_peer(RAW_TW, TRIO_WEBSOCKET, window)))
        peers.append(await stack.enter_async_context(connector_peer(window)))
        if note is None:
            peers.append(await stack.enter_async_context(raw_peer(RAW_WS, WEBSOCKETS, window)))
        for rep in range(reps):
            for peer in peers if rep % 2 == 0 else reversed(peers):
                if peer.prepare is not None:
                    peer.prepare(peer.next_seq, count)
                sample = await timed_run(
                    peer.stack, rep, peer.pid, peer.send, peer.tracker, peer.next_seq, count
                )
                peer.next_seq += count
                samples.append(sample)
    return samples


def report_lines(samples: Sequence[Sample]) -> list[str]:
    """What ``bench.py`` and this script print: frame sizes, the table, CPU ratios, headline."""
    sizes = Templates.build().sizes()
    return [
        "frames per message: "
        + ", ".join(f"{name} {n} B" for name, n in sizes.items())
        + f"; {bp.SATURATION_WINDOW} in flight",
        table(samples),
        *cpu_lines(samples),
        ratio_line(samples),
    ]


def report_section(samples: Sequence[Sample]) -> str:
    """The markdown section ``bench.py`` appends to its report (the headline on its own line)."""
    lines = report_lines(samples)
    return "\n".join(
        [
            "",
            "## Pipeline vs the protocol-equivalent raw exchange (issue 15)",
            "",
            "Saturation, every message inbound -> outbound -> outbound_result -> inbound_ack "
            "(pipeline: ack-gated deliveries); repetitions alternate; CPU from each process's "
            f"own CPU time. Target: ratio >= {TARGET_RATIO:.2f}.",
            "",
            "```",
            *lines[:-1],
            "```",
            "",
            lines[-1],
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the paired run, or the raw client child."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    client = sub.add_parser("client", help="(internal) the raw client child")
    client.add_argument("--library", choices=(TRIO_WEBSOCKET, WEBSOCKETS), required=True)
    client.add_argument("--url", required=True)
    client.add_argument("--hello", action="store_true", help="say hello first (a connector)")
    parser.add_argument("--reps", type=int, default=3, help="paired repetitions (>= 3)")
    parser.add_argument("--count", type=int, default=3000, help="messages per saturation run")
    parser.add_argument("--trust", default="careful", help="gateway trust preset (or open)")
    parser.add_argument("--no-websockets", action="store_true", help="skip websockets.trio")
    parser.add_argument("--json", action="store_true", help="print the samples as JSON too")
    args = parser.parse_args(argv)
    if args.role == "client":
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(client_main, args.library, args.url, args.hello)
        return 0
    samples = trio.run(
        lambda: paired(args.reps, args.count, args.trust, websockets=not args.no_websockets)
    )
    print("\n".join(report_lines(samples)))
    if args.json:
        print(json.dumps([sample_json(s) for s in samples]))
    return 1 if any(s.run.lost for s in samples) else 0


def sample_json(sample: Sample) -> dict[str, Any]:
    """One sample as plain data."""
    return {
        "stack": sample.stack,
        "rep": sample.rep,
        "throughput": round(sample.run.throughput, 1),
        "sent": sample.run.sent,
        "lost": sample.run.lost,
        "child_cpu_us_per_msg": round(sample.child_us(), 1),
        "local_cpu_us_per_msg": round(sample.local_us(), 1),
    }


if __name__ == "__main__":
    sys.exit(main())
