"""Pipeline benchmark: the gateway's round trip against a raw trio-websocket echo (issue 3).

Two measurements in one run, each over loopback between two processes:

* **pipeline** — this process runs the reference connector; a child process runs
  :func:`~relay_runtime.run_gateway` with the echo agent (and, with ``--trust careful``, the
  trust engine with every sender a known contact). The connector injects ``inbound`` frames
  and times each until the gateway's ``send`` for it arrives back at the connector.
* **raw** — this process runs a bare trio-websocket server; a child process dials it and
  answers every request with a reply of the gateway's ``send`` frame size. Same frame sizes,
  same direction of masking, same measuring side: the ceiling the pipeline is compared with.

Both are driven **open loop**: message *i* is due at ``t0 + i / rate`` and its latency is
counted from that due time, so a stall delays everything behind it in the figures too (no
coordinated omission). "Saturation" offers a fixed count as fast as the socket takes it and
reports completions per second. The headline is pipeline throughput / raw throughput.

* **pipe-pg** (with ``--state-dsn``) — the pipeline again with the gateway's state in
  PostgreSQL (``RELAY_STATE_DSN``): its saturation rate beside the SQLite pipeline's.

    python scripts/bench_pipeline.py [--rates 100,1000,5000] [--seconds 3] [--trust careful]
        [--state-dsn postgresql://postgres@127.0.0.1:5432/test]

Exit status 1 when a target is missed (>= 70 % of raw throughput at saturation; p99 <= 5 ms
at 1,000 msg/s) or a message was lost; the PostgreSQL figures are reported beside them.
Loopback only; every child process is stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, open_websocket_url, serve_websocket

from protocol import Inbound, MessageEvent, Outbound, SessionSource, encode_frame
from relay_runtime._heap import settle_heap

HOST: Final = "127.0.0.1"
GATEWAY_ID: Final = "gw-bench"
PLATFORM: Final = "discord"
SESSIONS: Final = 64
TEXT_BYTES: Final = 120
TARGET_RATIO: Final = 0.70
TARGET_P99_MS: Final = 5.0
TARGET_P99_RATE: Final = 1000
#: The pipeline with its state in PostgreSQL keeps at least this share of SQLite's rate.
TARGET_PG_RATIO: Final = 0.70
SATURATION_COUNT: Final = 5000
START_TIMEOUT_S: Final = 30.0
#: A rated run stops offering once this many messages are in flight (below the gateway's
#: ``max_pending_inbound``, whose reader pause would hold ``outbound_result``s for 30 s).
OVERLOAD_BACKLOG: Final = 500
#: Messages kept in flight by a saturation run.
SATURATION_WINDOW: Final = 128
DRAIN_TIMEOUT_S: Final = 20.0
_SEQ = re.compile(r"b(\d{9}) ")


# --------------------------------------------------------------------------- figures


@attrs.frozen
class RunResult:
    """One open-loop run: what was offered, what came back, and how fast."""

    stack: str
    offered: float | None  # msg/s; None for saturation
    sent: int
    completed: int
    seconds: float
    latencies_ms: tuple[float, ...] = attrs.field(repr=False)
    #: Set when a rated run was cut short because the backlog passed :data:`OVERLOAD_BACKLOG`.
    overloaded: bool = False

    @property
    def lost(self) -> int:
        """Messages injected that never came back within the drain timeout."""
        return self.sent - self.completed

    @property
    def throughput(self) -> float:
        """Completions per second over the run (first due time to last completion)."""
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: float) -> float:
        """The ``q``-quantile of round-trip latency in ms (nearest rank); NaN when empty."""
        return quantile(self.latencies_ms, q)

    @property
    def label(self) -> str:
        """``"1000/s"`` or ``"saturation"``."""
        if self.offered is None:
            return "saturation"
        return f"{self.offered:g}/s" + ("!" if self.overloaded else "")

    def summary(self) -> dict[str, Any]:
        """The figures as plain data (for JSON and the report)."""
        return {
            "stack": self.stack,
            "offered": self.offered,
            "sent": self.sent,
            "completed": self.completed,
            "lost": self.lost,
            "overloaded": self.overloaded,
            "throughput": round(self.throughput, 1),
            "p50_ms": round(self.pct(0.50), 3),
            "p99_ms": round(self.pct(0.99), 3),
            "p999_ms": round(self.pct(0.999), 3),
            "max_ms": round(self.pct(1.0), 3),
        }


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of ``values`` (sorted here); NaN for an empty sequence."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


# --------------------------------------------------------------------------- open-loop driver


class Tracker:
    """Due times of injected messages and their completions, keyed by sequence number."""

    def __init__(self) -> None:
        self.due: dict[int, float] = {}
        self.latencies: list[float] = []
        self.last_done = 0.0
        self._all_done = trio.Event()
        self._progress = trio.Event()
        self._expected: int | None = None

    @property
    def in_flight(self) -> int:
        """Messages injected and not yet completed."""
        return len(self.due)

    async def wait_below(self, window: int) -> None:
        """Wait until fewer than ``window`` messages are in flight."""
        while len(self.due) >= window:
            await self._progress.wait()

    def complete(self, seq: int) -> None:
        """Record the completion of ``seq`` now (unknown or repeated sequence ids are ignored)."""
        due = self.due.pop(seq, None)
        if due is None:
            return
        now = time.perf_counter()
        self.last_done = now
        self.latencies.append((now - due) * 1000.0)
        self._progress.set()
        self._progress = trio.Event()
        if self._expected is not None and len(self.latencies) >= self._expected:
            self._all_done.set()

    async def wait_all(self, expected: int, timeout_s: float) -> None:
        """Wait until ``expected`` completions arrived, or ``timeout_s`` passed."""
        self._expected = expected
        try:
            if len(self.latencies) >= expected:
                return
            with trio.move_on_after(timeout_s):
                await self._all_done.wait()
        finally:
            self._expected = None
            self._all_done = trio.Event()


async def drive(
    stack: str,
    send: Callable[[int], Awaitable[None]],
    tracker: Tracker,
    *,
    first_seq: int,
    rate: float | None,
    count: int,
) -> RunResult:
    """Offer ``count`` messages at ``rate`` per second, or saturate (``rate=None``).

    A rated run is open loop: message *i* is due at ``start + i / rate`` whatever happened
    before it. It stops offering early (``overloaded``) once more than
    :data:`OVERLOAD_BACKLOG` messages are in flight: past that point the stack is not
    keeping up, and pushing on only measures the length of the queue. Saturation keeps
    :data:`SATURATION_WINDOW` messages in flight and reports the completion rate.
    """
    # This process's collector must not stall the figures: its heap so far (the connector's
    # state, earlier runs' figures) is frozen out of gen-2's walks, as the connector CLI and
    # the gateway's run command do once they serve (a 24-72 ms gen-2 collection here made
    # the p99 at 2,500 msg/s otherwise). The thresholds stay CPython's: the connector's
    # frame records survive, and a larger young generation makes each middle collection
    # that walks them longer.
    gc.collect()
    gc.freeze()
    start = time.perf_counter()
    sent = 0
    overloaded = False
    for i in range(count):
        seq = first_seq + i
        if rate:
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await trio.sleep(delay)
            if tracker.in_flight > OVERLOAD_BACKLOG:
                overloaded = True
                break
        else:
            await tracker.wait_below(SATURATION_WINDOW)
            due = time.perf_counter()
        tracker.due[seq] = due
        await send(seq)
        sent += 1
    await tracker.wait_all(sent, DRAIN_TIMEOUT_S)
    latencies = tuple(tracker.latencies)
    tracker.latencies = []
    tracker.due.clear()
    end = tracker.last_done if latencies else time.perf_counter()
    return RunResult(stack, rate, sent, len(latencies), end - start, latencies, overloaded)


def progress(result: RunResult) -> None:
    """One line to stderr as each run ends (long runs show they are alive)."""
    print(
        f"  {result.stack} {result.label}: {result.completed}/{result.sent} "
        f"in {result.seconds:.1f} s, p99 {result.pct(0.99):.2f} ms",
        file=sys.stderr,
        flush=True,
    )


def plan(rates: Sequence[float], seconds: float, saturation: int) -> list[tuple[float | None, int]]:
    """The runs to make: each rate for ``seconds`` (at least 200 messages), then saturation."""
    runs: list[tuple[float | None, int]] = [(r, max(200, int(r * seconds))) for r in rates]
    if saturation:
        runs.append((None, saturation))
    return runs


def payload_text(seq: int) -> str:
    """The message text for ``seq``: a parseable marker padded to :data:`TEXT_BYTES`."""
    head = f"b{seq:09d} "
    return head + "x" * (TEXT_BYTES - len(head))


def parse_seq(text: str) -> int | None:
    """The sequence number inside a bench text, or None."""
    found = _SEQ.search(text)
    return int(found.group(1)) if found else None


def make_event(seq: int, session: int, *, user: str | None = None) -> MessageEvent:
    """An inbound DM from a known user, in one of :data:`SESSIONS` chats."""
    message_id = f"m{seq}"
    return MessageEvent(
        text=payload_text(seq),
        message_id=message_id,
        source=SessionSource(
            platform=PLATFORM,
            chat_id=f"chat-{session}",
            chat_type="dm",
            user_id=user or user_number(session),
            user_name=f"user {session}",
            message_id=message_id,
        ),
    )


def known_user(session: int) -> str:
    """The trust client id of the user who writes in chat ``session``."""
    return f"{PLATFORM}:{user_number(session)}"


def user_number(session: int) -> str:
    """The (discord-shaped, all digits) user id of the user who writes in chat ``session``."""
    return str(100_000_000 + session)


def frame_sizes() -> tuple[int, int]:
    """Byte sizes of one bench ``inbound`` frame and of the gateway's ``send`` for it."""
    from protocol import Send

    inbound = encode_frame(Inbound(event=make_event(123456789, 7)))
    outbound = encode_frame(
        Outbound(
            request_id="00000000-0000-0000-0000-000000000000",
            action=Send(chat_id="chat-7", content=payload_text(123456789)),
            platform=PLATFORM,
        )
    )
    return len(inbound.encode()), len(outbound.encode())


# --------------------------------------------------------------------------- child processes


def _python(*args: str) -> list[str]:
    return [sys.executable, os.fspath(Path(__file__).resolve()), *args]


@contextlib.contextmanager
def child(argv: list[str], env: dict[str, str] | None = None, stderr: Path | None = None) -> Any:
    """Start a child process (stdout piped; stderr inherited or to a file); always stop it."""
    with contextlib.ExitStack() as files:
        err = files.enter_context(stderr.open("w")) if stderr is not None else None
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **(env or {})},
            text=True,
        )
        try:
            yield proc
        finally:
            stop_process(proc)


def log_summary(path: Path, top: int = 3) -> str:
    """``N lines`` of a child's stderr log and its most frequent lines (ids masked)."""
    if not path.exists():
        return "no log"
    lines = path.read_text(errors="replace").splitlines()
    counts = Counter(re.sub(r"[0-9a-f]{32}|\d+", "#", line)[:90] for line in lines)
    common = "; ".join(f"{n} x {text!r}" for text, n in counts.most_common(top))
    return f"{len(lines)} lines" + (f" ({common})" if common else "")


def stop_process(proc: subprocess.Popen[str], timeout_s: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: the child is gone when this returns."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def wait_line(proc: subprocess.Popen[str], prefix: str, timeout_s: float) -> str:
    """The first stdout line of ``proc`` starting with ``prefix`` (fails after ``timeout_s``)."""
    assert proc.stdout is not None
    stdout = proc.stdout
    with trio.fail_after(timeout_s):
        while True:
            line = await trio.to_thread.run_sync(stdout.readline, abandon_on_cancel=True)
            if not line:
                raise RuntimeError(f"child {proc.args!r} exited ({proc.poll()}) before {prefix!r}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()


def gateway_argv(url: str, state_dir: Path, trust: str, known: int) -> list[str]:
    """The command line of a gateway child (see :func:`gateway_main`)."""
    return _python(
        "gateway", "--url", url, "--state-dir", os.fspath(state_dir), "--trust", trust,
        "--known", str(known),
    )  # fmt: skip


# --------------------------------------------------------------------------- the pipeline


class BenchConnector:
    """The reference connector, with outbound ``send`` arrivals reported to a tracker."""

    def __init__(self, secret: str, **options: Any) -> None:
        from relay_runtime.connector import DEFAULT_KEEP_RECORDS, ReferenceConnector

        tracker = self.tracker = Tracker()
        #: Messages go round-robin over this many chats (one user each).
        self.sessions = SESSIONS

        def timed(conn: Any, frame: Outbound) -> None:
            content = getattr(frame.action, "content", None)
            if isinstance(content, str):
                seq = parse_seq(content)
                if seq is not None:
                    tracker.complete(seq)

        # Bounded records, as the connector CLI keeps them: a run's frames would otherwise
        # pile up for this process's collector to walk (the p99 at 2,500 msg/s).
        options.setdefault("keep_records", DEFAULT_KEEP_RECORDS)
        self.connector = ReferenceConnector(
            secrets={GATEWAY_ID: secret}, on_outbound=timed, **options
        )

    async def inject(self, seq: int) -> None:
        """Inject message ``seq`` (live; buffered if the gateway is away)."""
        event = make_event(seq, seq % self.sessions)
        await self.connector.inject(event, gateway_id=GATEWAY_ID)

    def trim(self) -> None:
        """Forget per-frame records so long runs keep flat memory."""
        self.connector.clear_records()
        self.connector.clear_messages()


@contextlib.asynccontextmanager
async def pipeline(
    trust: str = "careful",
    state_dir: Path | None = None,
    state_dsn: str | None = None,
    **connector_options: Any,
) -> AsyncIterator[tuple[BenchConnector, subprocess.Popen[str]]]:
    """A serving bench connector here and a READY gateway child dialled into it (its
    state in PostgreSQL at ``state_dsn``, else in SQLite in ``state_dir``)."""
    secret = secrets.token_urlsafe(32)
    bench = BenchConnector(secret, **connector_options)
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gw-")))
        async with trio.open_nursery() as nursery:
            await nursery.start(bench.connector.serve, HOST, 0)
            argv = gateway_argv(bench.connector.base_url, state_dir, trust, SESSIONS)
            log = state_dir / "gateway-stderr.log"
            env = {"BENCH_GATEWAY_SECRET": secret, "BENCH_STATE_DSN": state_dsn or ""}
            proc = stack.enter_context(child(argv, env, log))
            try:
                try:
                    await wait_line(proc, "READY", START_TIMEOUT_S)
                except RuntimeError:
                    sys.stderr.write(log.read_text(errors="replace")[-4000:])
                    raise
                with trio.fail_after(START_TIMEOUT_S):
                    await bench.connector.wait_connected(GATEWAY_ID)
                yield bench, proc
            finally:
                nursery.cancel_scope.cancel()
                print(f"  gateway stderr: {log_summary(log)}", file=sys.stderr, flush=True)


async def run_pipeline(
    runs: Sequence[tuple[float | None, int]],
    trust: str = "careful",
    state_dsn: str | None = None,
) -> list[RunResult]:
    """The pipeline figures for ``runs`` (after a short warm-up); with ``state_dsn`` the
    gateway keeps its state in PostgreSQL (stack ``pipe-pg``), its rows cleared first."""
    results: list[RunResult] = []
    if state_dsn is not None:
        await trio.to_thread.run_sync(clear_pg_state, state_dsn)
    name = "pipeline" if state_dsn is None else "pipe-pg"
    async with pipeline(trust, state_dsn=state_dsn) as (bench, _proc):
        seq = 1
        await drive("warmup", bench.inject, bench.tracker, first_seq=seq, rate=None, count=300)
        seq += 300
        for rate, count in runs:
            result = await drive(
                name, bench.inject, bench.tracker, first_seq=seq, rate=rate, count=count
            )
            progress(result)
            results.append(result)
            seq += count
            bench.trim()
    return results


def clear_pg_state(dsn: str) -> None:
    """Forget the bench gateway's state in PostgreSQL (a previous run's dedupe window
    would take this run's message ids for replays)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('relay_state_lease')").fetchone()
        if exists is None or exists[0] is None:
            return  # a fresh database: the gateway creates the tables
        with conn.transaction():
            # keys/claims: schema 1; dedupe: schema 2 (whichever the database has).
            for table in ("keys", "claims", "dedupe", "turns", "outbox", "meta", "lease"):
                found = conn.execute(f"SELECT to_regclass('relay_state_{table}')".encode())
                if (found.fetchone() or (None,))[0] is None:
                    continue
                conn.execute(
                    f"DELETE FROM relay_state_{table} WHERE gateway_id = %s".encode(),
                    (GATEWAY_ID,),
                )


# --------------------------------------------------------------------------- raw echo


async def run_raw(runs: Sequence[tuple[float | None, int]]) -> list[RunResult]:
    """The raw trio-websocket request/response figures for ``runs``."""
    inbound_bytes, outbound_bytes = frame_sizes()
    tracker = Tracker()
    connected: trio.MemorySendChannel[Any]
    connected, accepted = trio.open_memory_channel[Any](1)

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await connected.send(ws)
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = await ws.get_message()
                seq = parse_seq(message if isinstance(message, str) else message.decode())
                if seq is not None:
                    tracker.complete(seq)

    results: list[RunResult] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, HOST, 0, None)
        url = f"ws://{HOST}:{server.port}/raw"
        argv = _python("raw-client", "--url", url, "--reply-bytes", str(outbound_bytes))
        with child(argv):
            with trio.fail_after(START_TIMEOUT_S):
                ws = await accepted.receive()
            pad = "x" * max(0, inbound_bytes - len(payload_text(0)) - 2)

            async def send(seq: int) -> None:
                await ws.send_message(f"{payload_text(seq)}|{pad}\n")

            seq = 1
            await drive("warmup", send, tracker, first_seq=seq, rate=None, count=300)
            seq += 300
            for rate, count in runs:
                result = await drive("raw", send, tracker, first_seq=seq, rate=rate, count=count)
                progress(result)
                results.append(result)
                seq += count
            await ws.aclose()
        nursery.cancel_scope.cancel()
    return results


async def raw_client_main(url: str, reply_bytes: int) -> None:
    """Child: dial ``url`` and answer each message with ``reply_bytes`` carrying its marker."""
    async with open_websocket_url(url) as ws:
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = await ws.get_message()
                text = message if isinstance(message, str) else message.decode()
                head = text[: TEXT_BYTES + 1]
                await ws.send_message(head + "y" * max(0, reply_bytes - len(head)))


# --------------------------------------------------------------------------- gateway child


def _what_if_synchronous(level: str) -> None:
    """Bench-only experiment: run the state db at ``PRAGMA synchronous=<level>``.

    Not a configuration of the runtime: it patches :class:`StateDB` in this child process
    only, to measure how much of the round trip is the per-message fsync.
    """
    from relay_runtime._state import StateDB

    connect = StateDB._connect

    def patched(path: Path, now: float) -> Any:
        conn = connect(path, now)
        conn.execute(f"PRAGMA synchronous = {level}")
        return conn

    StateDB._connect = staticmethod(patched)  # type: ignore[method-assign]


async def gateway_main(url: str, state_dir: Path, trust: str, known: int) -> None:
    """Child: the echo gateway, trust engine on, ``known`` bench users made contacts.

    It stands in for ``relay-runtime run``: same trust opening, same heap settling at READY.
    """
    sync_level = os.environ.get("BENCH_WHAT_IF_SYNCHRONOUS")
    if sync_level in ("NORMAL", "OFF"):
        _what_if_synchronous(sync_level)
    from relay_runtime import run_gateway
    from relay_runtime._cli.run import open_trust
    from relay_runtime.agents import echo
    from relay_runtime.config import GatewayConfig

    config = GatewayConfig(
        relay_url=url,
        gateway_id=GATEWAY_ID,
        secret=os.environ["BENCH_GATEWAY_SECRET"],
        state_dir=state_dir,
        trust=trust,
        state_dsn=os.environ.get("BENCH_STATE_DSN") or None,
        backoff_base_s=0.05,
        backoff_cap_s=0.5,
        max_concurrent_turns=SESSIONS,
        max_pending_inbound=max(1000, SESSIONS),
    )
    async with open_trust(config) as engine:
        ops = getattr(engine, "ops", None)
        if ops is not None:
            for session in range(known):
                await ops.promote(known_user(session), "contact", "local:bench", tier="operator")
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                start = functools.partial(run_gateway, config, echo, trust=engine)
                await nursery.start(start)
                settle_heap()  # as `relay-runtime run` does once the gateway is ready
                print("READY", flush=True)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- report


def table(results: Sequence[RunResult]) -> str:
    """A fixed-width table of runs."""
    head = (
        f"{'stack':<9} {'offered':>11} {'sent':>6} {'lost':>5} {'msg/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8}"
    )
    lines = [head, "-" * len(head)]
    lines.extend(
        f"{r.stack:<9} {r.label:>11} {r.sent:>6} {r.lost:>5} {r.throughput:>9.0f} "
        f"{r.pct(0.5):>8.2f} {r.pct(0.99):>8.2f} {r.pct(0.999):>9.2f} {r.pct(1.0):>8.2f}"
        for r in results
    )
    return "\n".join(lines)


@attrs.frozen
class Verdict:
    """The headline figures and whether the issue-3 targets are met."""

    ratio: float
    p99_at_target_ms: float
    lost: int

    @property
    def ok(self) -> bool:
        """Targets met and nothing lost."""
        return (
            self.ratio >= TARGET_RATIO and self.p99_at_target_ms <= TARGET_P99_MS and not self.lost
        )

    def lines(self) -> list[str]:
        """Human-readable verdict lines."""
        return [
            f"throughput ratio pipeline/raw at saturation: {self.ratio:.2f} "
            f"(target >= {TARGET_RATIO:.2f})",
            f"pipeline p99 at {TARGET_P99_RATE}/s: {self.p99_at_target_ms:.2f} ms "
            f"(target <= {TARGET_P99_MS:.0f} ms)",
            f"messages lost: {self.lost}",
        ]


def verdict(pipe: Sequence[RunResult], raw: Sequence[RunResult]) -> Verdict:
    """Compare the saturation runs and read the p99 at :data:`TARGET_P99_RATE`."""
    pipe_sat = next((r for r in pipe if r.offered is None), pipe[-1])
    raw_sat = next((r for r in raw if r.offered is None), raw[-1])
    ratio = pipe_sat.throughput / raw_sat.throughput if raw_sat.throughput else 0.0
    at_target = [r for r in pipe if r.offered == TARGET_P99_RATE]
    p99 = at_target[0].pct(0.99) if at_target else math.nan
    return Verdict(ratio, p99, sum(r.lost for r in pipe))


@attrs.frozen
class PgVerdict:
    """The gateway with its state in PostgreSQL beside the same gateway on SQLite."""

    sqlite_rate: float
    pg_rate: float
    sqlite_p99_ms: float
    pg_p99_ms: float
    lost: int

    @property
    def ratio(self) -> float:
        return self.pg_rate / self.sqlite_rate if self.sqlite_rate else 0.0

    @property
    def ok(self) -> bool:
        return self.ratio >= TARGET_PG_RATIO and not self.lost

    def lines(self) -> list[str]:
        return [
            f"state on PostgreSQL: saturation {self.pg_rate:,.0f} msg/s vs SQLite "
            f"{self.sqlite_rate:,.0f} msg/s = {self.ratio:.2f} (target >= {TARGET_PG_RATIO:.2f})",
            f"state on PostgreSQL: p99 at {TARGET_P99_RATE}/s {self.pg_p99_ms:.2f} ms vs SQLite "
            f"{self.sqlite_p99_ms:.2f} ms; messages lost {self.lost}",
        ]


def pg_verdict(pipe: Sequence[RunResult], pg: Sequence[RunResult]) -> PgVerdict:
    """Compare the SQLite and PostgreSQL pipelines at saturation and at 1,000 msg/s."""

    def figures(runs: Sequence[RunResult]) -> tuple[float, float]:
        sat = next((r for r in runs if r.offered is None), runs[-1])
        at_target = [r for r in runs if r.offered == TARGET_P99_RATE]
        return sat.throughput, at_target[0].pct(0.99) if at_target else math.nan

    sqlite_rate, sqlite_p99 = figures(pipe)
    pg_rate, pg_p99 = figures(pg)
    return PgVerdict(sqlite_rate, pg_rate, sqlite_p99, pg_p99, sum(r.lost for r in pg))


async def measure(
    rates: Sequence[float], seconds: float, saturation: int, trust: str
) -> tuple[list[RunResult], list[RunResult]]:
    """Pipeline runs, then raw-echo runs, over the same plan."""
    runs = plan(rates, seconds, saturation)
    pipe = await run_pipeline(runs, trust)
    raw = await run_raw(runs)
    return pipe, raw


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the benchmark, or one of the child roles."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    gw = sub.add_parser("gateway", help="(internal) run the echo gateway child")
    gw.add_argument("--url", required=True)
    gw.add_argument("--state-dir", required=True, type=Path)
    gw.add_argument("--trust", default="careful")
    gw.add_argument("--known", type=int, default=SESSIONS)
    rc = sub.add_parser("raw-client", help="(internal) run the raw echo client child")
    rc.add_argument("--url", required=True)
    rc.add_argument("--reply-bytes", type=int, required=True)
    parser.add_argument("--rates", default="100,1000,5000", help="offered msg/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each rated run")
    parser.add_argument("--saturation", type=int, default=SATURATION_COUNT)
    parser.add_argument("--trust", default="careful", help="gateway trust preset (or open)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument(
        "--state-dsn",
        metavar="DSN",
        help="also run the pipeline with the gateway's state in PostgreSQL at DSN",
    )
    args = parser.parse_args(argv)
    if args.role == "gateway":
        profile_to = os.environ.get("BENCH_PROFILE")
        profiler = None
        if profile_to:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(gateway_main, args.url, args.state_dir, args.trust, args.known)
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)
        return 0
    if args.role == "raw-client":
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(raw_client_main, args.url, args.reply_bytes)
        return 0
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    inbound_bytes, outbound_bytes = frame_sizes()
    pipe, raw = trio.run(measure, rates, args.seconds, args.saturation, args.trust)
    pg: list[RunResult] = []
    if args.state_dsn:
        runs = plan(rates, args.seconds, args.saturation)
        pg = trio.run(run_pipeline, runs, args.trust, args.state_dsn)
    print(f"frames: inbound {inbound_bytes} B, send {outbound_bytes} B; trust {args.trust}")
    print(table([*pipe, *pg, *raw]))
    result = verdict(pipe, raw)
    for line in result.lines():
        print(line)
    if pg:
        for line in pg_verdict(pipe, pg).lines():
            print(line)
    if args.json:
        print(
            json.dumps({"pipeline": [r.summary() for r in pipe], "raw": [r.summary() for r in raw]})
        )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
