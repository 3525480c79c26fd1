"""WebSocket library benchmark: trio-websocket vs websockets.trio as the gateway's client (issue 7).

Issue 7 asks, before any switch of the transport's WebSocket library, for the alternative to
be measured side by side on the same machine in the same run. This script does that. The
server is always this process, on trio-websocket's ``serve_websocket`` (the connector's side
never changes); the client is a child process on one of the two libraries (the gateway's
side, the one a switch would change). Two shapes, each over loopback:

* **raw** — exactly :mod:`bench_pipeline`'s raw echo: the server pushes an inbound-sized
  text message, the client answers with a ``send``-sized text message carrying its marker.
* **gateway** — the frames a gateway handles per message: the client receives the inbound,
  sends the ``send``, then receives an ``outbound_result``-sized answer from the server
  (2 receives + 1 send per message on the client). A round trip is timed from the inbound's
  due time to the server's receipt of the ``send`` (plus writing the result); the results are
  checked by count.

Both are driven open loop (:func:`bench_pipeline.drive`): a rated run at ``--rate`` msg/s
gives p50/p99, a saturation run keeps 128 messages in flight and gives msg/s. The client's
CPU time (``time.process_time`` in the child, read over the socket before and after each
run) divided by the messages of the run is its CPU per message. Every (shape, library)
gets a fresh child per round; the library order alternates between rounds. Throughput is
the median over rounds; latencies and CPU are pooled over rounds.

    python scripts/bench_ws.py            # 3 rounds, ~1 min
    python scripts/bench_ws.py --quick    # 1 short round, < 30 s
    python scripts/bench_ws.py --json     # the figures as JSON too

Exit status 1 when a message was lost, 2 when websockets (>= 17) is not installed.
Loopback only; every child process is stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio
from bench_pipeline import (
    HOST,
    SATURATION_WINDOW,
    START_TIMEOUT_S,
    TEXT_BYTES,
    RunResult,
    Tracker,
    child,
    drive,
    frame_sizes,
    parse_seq,
    payload_text,
    progress,
    quantile,
    wait_line,
)
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from protocol import OutboundResult, encode_frame

TRIO_WEBSOCKET: Final = "trio-websocket"
WEBSOCKETS: Final = "websockets.trio"
LIBRARIES: Final = (TRIO_WEBSOCKET, WEBSOCKETS)
RAW: Final = "raw"
GATEWAY: Final = "gateway"
SHAPES: Final = (RAW, GATEWAY)
#: The control message asking the client child for its CPU time and counters.
CPU_ASK: Final = "cpu?"
CPU_REPLY: Final = "cpu "
RESULT_PREFIX: Final = '{"type":"outbound_result"'
WARMUP: Final = 300
CONTROL_TIMEOUT_S: Final = 20.0
SCRIPT: Final = os.fspath(Path(__file__).resolve())


def result_text(seq: int = 123456789) -> str:
    """An ``outbound_result`` frame as the reference connector answers a ``send`` (~120 B)."""
    return encode_frame(
        OutboundResult(
            request_id="00000000-0000-0000-0000-000000000000",
            result={"success": True, "message_id": f"m-{seq}"},
        )
    )


# --------------------------------------------------------------------------- figures


@attrs.frozen
class Sample:
    """One run of one client child, with the client's CPU time over it."""

    library: str
    shape: str
    run: RunResult
    cpu_s: float
    #: Replies the client did not send, or results it did not receive, during the run.
    missing: int = 0
    #: CPU time of this (the server's) process over the run.
    server_cpu_s: float = 0.0


@attrs.frozen
class Row:
    """The figures of one (library, shape) over all rounds."""

    library: str
    shape: str
    saturation: float  # msg/s, median over rounds
    saturation_min: float  # slowest and fastest round (saturation is the noisy figure)
    saturation_max: float
    p50_ms: float  # at the rated run, pooled over rounds
    p99_ms: float
    cpu_sat_us: float  # client CPU per message at saturation
    cpu_rated_us: float  # client CPU per message at the rated run
    server_cpu_sat_us: float  # the (unchanged) server's CPU per message at saturation
    sent: int
    lost: int

    def summary(self) -> dict[str, Any]:
        """The row as plain data (for JSON)."""
        return {
            k: (round(v, 3) if isinstance(v, float) else v) for k, v in attrs.asdict(self).items()
        }


def cpu_per_message_us(samples: Iterable[Sample], *, server: bool = False) -> float:
    """Client (or server) CPU µs per completed message over ``samples``; NaN if none."""
    cpu = 0.0
    done = 0
    for s in samples:
        cpu += s.server_cpu_s if server else s.cpu_s
        done += s.run.completed
    return cpu / done * 1e6 if done else math.nan


def aggregate(samples: Sequence[Sample]) -> list[Row]:
    """One row per (library, shape) found in ``samples``, in :data:`SHAPES`/library order."""
    rows: list[Row] = []
    for shape in SHAPES:
        for library in LIBRARIES:
            mine = [s for s in samples if s.library == library and s.shape == shape]
            if not mine:
                continue
            sat = [s for s in mine if s.run.offered is None]
            rated = [s for s in mine if s.run.offered is not None]
            latencies = [ms for s in rated for ms in s.run.latencies_ms]
            speeds = [s.run.throughput for s in sat]
            rows.append(
                Row(
                    library=library,
                    shape=shape,
                    saturation=statistics.median(speeds) if speeds else math.nan,
                    saturation_min=min(speeds, default=math.nan),
                    saturation_max=max(speeds, default=math.nan),
                    p50_ms=quantile(latencies, 0.50),
                    p99_ms=quantile(latencies, 0.99),
                    cpu_sat_us=cpu_per_message_us(sat),
                    cpu_rated_us=cpu_per_message_us(rated),
                    server_cpu_sat_us=cpu_per_message_us(sat, server=True),
                    sent=sum(s.run.sent for s in mine),
                    lost=sum(s.run.lost + s.missing for s in mine),
                )
            )
    return rows


#: The row fields compared between libraries, with their column titles.
METRICS: Final = (
    ("saturation", "msg/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("cpu_sat_us", "cpu µs/msg sat"),
    ("cpu_rated_us", "cpu µs/msg rated"),
    ("server_cpu_sat_us", "server µs/msg sat"),
)


def ratios(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """Per shape: websockets.trio / trio-websocket for each of :data:`METRICS`."""
    out: dict[str, dict[str, float]] = {}
    for shape in SHAPES:
        by_lib = {r.library: r for r in rows if r.shape == shape}
        base, alt = by_lib.get(TRIO_WEBSOCKET), by_lib.get(WEBSOCKETS)
        if base is None or alt is None:
            continue
        out[shape] = {
            name: (getattr(alt, name) / getattr(base, name) if getattr(base, name) else math.nan)
            for name, _ in METRICS
        }
    return out


def sat_range(row: Row) -> str:
    """``"6.1k-15.3k"``: the slowest and fastest saturation round in thousands of msg/s."""
    return f"{row.saturation_min / 1000:.1f}k-{row.saturation_max / 1000:.1f}k"


def format_table(rows: Sequence[Row], rate: float) -> str:
    """A fixed-width table of ``rows`` (latency columns at ``rate`` msg/s)."""
    at = f"@{rate:g}/s"
    head = (
        f"{'library':<16} {'shape':<8} {'msg/s sat':>10} {'(range)':>13} {'p50 ms ' + at:>14} "
        f"{'p99 ms ' + at:>14} {'cpu µs/msg sat':>15} {'cpu µs/msg ' + at:>18} "
        f"{'server µs/msg sat':>17} {'sent':>7} {'lost':>5}"
    )
    lines = [head, "-" * len(head)]
    lines.extend(
        f"{r.library:<16} {r.shape:<8} {r.saturation:>10,.0f} {sat_range(r):>13} {r.p50_ms:>14.2f} "
        f"{r.p99_ms:>14.2f} {r.cpu_sat_us:>15.1f} {r.cpu_rated_us:>18.1f} "
        f"{r.server_cpu_sat_us:>17.1f} {r.sent:>7} {r.lost:>5}"
        for r in rows
    )
    return "\n".join(lines)


def format_ratios(table: dict[str, dict[str, float]]) -> str:
    """The ratios websockets.trio / trio-websocket, one line per shape."""
    head = f"{'ratio ws/tw':<16} {'shape':<8}" + "".join(
        f" {title:>{max(8, len(title))}}" for _, title in METRICS
    )
    lines = [head, "-" * len(head)]
    for shape, values in table.items():
        cells = "".join(f" {values[name]:>{max(8, len(title))}.2f}" for name, title in METRICS)
        lines.append(f"{'':<16} {shape:<8}{cells}")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Versions of the libraries compared (and what they run on)."""
    found: dict[str, str] = {"python": sys.version.split()[0]}
    for name in ("trio-websocket", "wsproto", "websockets", "trio"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    speedups = importlib.util.find_spec("websockets.speedups") is not None
    found["websockets C speedups"] = "yes" if speedups else "no"
    return found


def websockets_ok() -> bool:
    """Whether websockets >= 17 (the first with ``websockets.trio``) is installed."""
    try:
        major = importlib.metadata.version("websockets").split(".")[0]
    except importlib.metadata.PackageNotFoundError:
        return False
    return major.isdigit() and int(major) >= 17


# --------------------------------------------------------------------------- client child


async def answer(
    receive: Callable[[], Awaitable[str | bytes]],
    send: Callable[[str], Awaitable[None]],
    reply_bytes: int,
) -> None:
    """Child loop, the same for both libraries: answer requests, count results, report CPU.

    A request (a bench text) gets a ``reply_bytes`` reply carrying its marker, as
    :func:`bench_pipeline.raw_client_main` does; an ``outbound_result`` is counted; the
    control message :data:`CPU_ASK` is answered with the process CPU time and both counts.
    """
    replies = 0
    results = 0
    while True:
        message = await receive()
        text = message if isinstance(message, str) else message.decode()
        if text.startswith(RESULT_PREFIX):
            results += 1
        elif text == CPU_ASK:
            await send(f"{CPU_REPLY}{time.process_time_ns()} {replies} {results}")
        else:
            head = text[: TEXT_BYTES + 1]
            await send(head + "y" * max(0, reply_bytes - len(head)))
            replies += 1


async def client_main(library: str, url: str, reply_bytes: int) -> None:
    """Child: dial ``url`` with ``library`` (no compression) and run :func:`answer`."""
    if library == TRIO_WEBSOCKET:
        async with open_websocket_url(url) as tw:
            print("CONNECTED", flush=True)
            with contextlib.suppress(ConnectionClosed):
                await answer(tw.get_message, tw.send_message, reply_bytes)
    elif library == WEBSOCKETS:
        from websockets.exceptions import ConnectionClosed as WsClosed
        from websockets.trio.client import connect

        async with connect(url, compression=None, proxy=None) as ws:
            print("CONNECTED", flush=True)
            with contextlib.suppress(WsClosed):
                await answer(ws.recv, ws.send, reply_bytes)
    else:
        raise ValueError(f"unknown library {library!r}")


# --------------------------------------------------------------------------- server side


@attrs.frozen
class Counters:
    """What the client child reported: CPU seconds, replies sent, results received."""

    cpu_s: float
    replies: int
    results: int


async def measure_one(
    library: str, shape: str, runs: Sequence[tuple[float | None, int]]
) -> list[Sample]:
    """Serve here, dial from a ``library`` child, and make ``runs`` in ``shape``."""
    inbound_bytes, outbound_bytes = frame_sizes()
    answer_text = result_text()
    tracker = Tracker()
    connected: trio.MemorySendChannel[WebSocketConnection]
    connected, accepted = trio.open_memory_channel[WebSocketConnection](1)
    reports: trio.MemorySendChannel[str]
    reports, report_received = trio.open_memory_channel[str](1)

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await connected.send(ws)
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = await ws.get_message()
                text = message if isinstance(message, str) else message.decode()
                if text.startswith(CPU_REPLY):
                    await reports.send(text)
                    continue
                seq = parse_seq(text)
                if seq is not None:
                    if shape == GATEWAY:
                        # Written before the completion is recorded, so every result of a
                        # run is on the wire before the CPU_ASK that closes the run.
                        await ws.send_message(answer_text)
                    tracker.complete(seq)

    samples: list[Sample] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, HOST, 0, None)
        url = f"ws://{HOST}:{server.port}/{shape}"
        argv = [
            sys.executable, SCRIPT, "client", "--library", library,
            "--url", url, "--reply-bytes", str(outbound_bytes),
        ]  # fmt: skip
        with child(argv) as proc:
            await wait_line(proc, "CONNECTED", START_TIMEOUT_S)
            with trio.fail_after(START_TIMEOUT_S):
                ws = await accepted.receive()
            pad = "x" * max(0, inbound_bytes - len(payload_text(0)) - 2)

            async def send(seq: int) -> None:
                await ws.send_message(f"{payload_text(seq)}|{pad}\n")

            async def counters() -> Counters:
                await ws.send_message(CPU_ASK)
                with trio.fail_after(CONTROL_TIMEOUT_S):
                    _, ns, replies, results = (await report_received.receive()).split()
                return Counters(int(ns) / 1e9, int(replies), int(results))

            seq = 1
            await drive("warmup", send, tracker, first_seq=seq, rate=None, count=WARMUP)
            seq += WARMUP
            for rate, count in runs:
                before = await counters()
                server_before = time.process_time()
                result = await drive(
                    f"{library}/{shape}", send, tracker, first_seq=seq, rate=rate, count=count
                )
                server_cpu = time.process_time() - server_before
                after = await counters()
                progress(result)
                missing = result.sent - (after.replies - before.replies)
                if shape == GATEWAY:
                    missing += result.completed - (after.results - before.results)
                samples.append(
                    Sample(
                        library,
                        shape,
                        result,
                        after.cpu_s - before.cpu_s,
                        max(0, missing),
                        server_cpu,
                    )
                )
                seq += count
            await ws.aclose()
        nursery.cancel_scope.cancel()
    return samples


async def measure(
    rounds: int, rate: float, seconds: float, saturation: int, libraries: Sequence[str] = LIBRARIES
) -> list[Sample]:
    """``rounds`` rounds of both shapes with every library; library order alternates."""
    runs: list[tuple[float | None, int]] = [(rate, max(100, int(rate * seconds)))]
    if saturation:
        runs.append((None, saturation))
    samples: list[Sample] = []
    for round_no in range(rounds):
        order = list(libraries) if round_no % 2 == 0 else list(reversed(libraries))
        for shape in SHAPES:
            for library in order:
                samples.extend(await measure_one(library, shape, runs))
    return samples


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the comparison, or the client child role."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    cl = sub.add_parser("client", help="(internal) run a client child")
    cl.add_argument("--library", choices=LIBRARIES, required=True)
    cl.add_argument("--url", required=True)
    cl.add_argument("--reply-bytes", type=int, required=True)
    parser.add_argument("--quick", action="store_true", help="one short round (< 30 s)")
    parser.add_argument("--rounds", type=int, help="rounds of every (shape, library); default 3")
    parser.add_argument("--rate", type=float, default=1000.0, help="msg/s of the latency run")
    parser.add_argument("--seconds", type=float, help="length of the latency run (default 3)")
    parser.add_argument("--saturation", type=int, help="messages of the saturation run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    if args.role == "client":
        trio.run(client_main, args.library, args.url, args.reply_bytes)
        return 0
    if not websockets_ok():
        print("websockets >= 17 is needed: pip install 'websockets>=17'", file=sys.stderr)
        return 2
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    saturation = args.saturation or (3000 if args.quick else 20_000)
    samples = trio.run(measure, rounds, args.rate, seconds, saturation)
    rows = aggregate(samples)
    inbound_bytes, outbound_bytes = frame_sizes()
    found = versions()
    print(", ".join(f"{name} {version}" for name, version in found.items()))
    print(
        f"frames: inbound {inbound_bytes} B, send {outbound_bytes} B, "
        f"result {len(result_text().encode())} B; {rounds} round(s); "
        f"rated run {args.rate:g}/s for {seconds:g} s; saturation {saturation} messages, "
        f"{SATURATION_WINDOW} in flight"
    )
    print(format_table(rows, args.rate))
    print()
    print(format_ratios(ratios(rows)))
    print("(msg/s: above 1 is faster; ms and µs: below 1 is cheaper)")
    if args.json:
        print(
            json.dumps(
                {
                    "versions": found,
                    "rows": [r.summary() for r in rows],
                    "ratios": ratios(rows),
                    "runs": [
                        {
                            "library": s.library,
                            "shape": s.shape,
                            "cpu_s": round(s.cpu_s, 6),
                            "server_cpu_s": round(s.server_cpu_s, 6),
                            "missing": s.missing,
                        }
                        | s.run.summary()
                        for s in samples
                    ],
                }
            )
        )
    return 1 if any(r.lost for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
