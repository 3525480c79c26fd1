"""Real processes for the fault suite: a connector child, gateway children, and the journal.

A :class:`FaultRun` owns one scenario: the connector process (``connector_proc.py``, the real
reference connector injecting a scripted schedule and journaling to disk), the gateway
processes (``python -m relay_runtime run`` with the fault agent), started, killed and
restarted as the scenario says, and the counts drawn from the journals at the end.

Real processes run on the real clock, so the harness waits on *conditions*: a journal line,
a log line, a process exit — polled, since another process writes them. No sleep decides a
verdict. Two bounds only turn a hang into a failure: a scenario's overall ``fail_after`` and
the stall guard, which fails a wait when neither journal has grown for ``STALL_S`` seconds
(a correct runtime never goes that long without a post, an ack or a turn while work is
left; the harness's own fault windows do not count as silence).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from tests.faults.fault_journal import JournalReader, Tally, message_number, read_records, tally

HERE = Path(__file__).resolve().parent
GATEWAY_ID = "gw-faults"
READY = "gateway ready"
#: A wait fails when no journal grew for this long (see the module docstring).
STALL_S = float(os.environ.get("FAULT_STALL_S", "20"))
#: How often files written by other processes are looked at.
POLL_S = 0.02
#: Bound on a process exit after SIGTERM: the launcher promises 10 s; twice that, loaded.
EXIT_BOUND_S = 20.0
#: Bound on anything else one process does (start-up, connector URL).
GUARD_S = 60.0


class Stalled(AssertionError):
    """Nothing moved for ``STALL_S`` seconds while the scenario still waited for something."""


@attrs.define(eq=False)
class Child:
    """A running child process and the lines it wrote to its pipes so far."""

    name: str
    process: trio.Process
    out: list[str]
    err: list[str] = attrs.field(factory=list)
    eof: trio.Event = attrs.field(factory=trio.Event)
    killed: bool = False

    def saw(self, needle: str) -> bool:
        return any(needle in line for line in self.err)

    def count(self, needle: str) -> int:
        return sum(needle in line for line in self.err)

    def tail(self, lines: int = 30, width: int = 400) -> str:
        return "\n".join(line[:width] for line in self.err[-lines:])

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


async def _pump(stream: trio.abc.ReceiveStream | None, sink: list[str]) -> None:
    assert stream is not None
    buffer = b""
    try:
        while chunk := await stream.receive_some(65536):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            sink.extend(part.decode("utf-8", "replace") for part in complete)
    finally:
        if buffer:
            sink.append(buffer.decode("utf-8", "replace"))


@attrs.define(eq=False)
class FaultRun:
    """One scenario's processes, journals and running counts (see the module docstring)."""

    name: str
    messages: int
    workdir: Path
    nursery: trio.Nursery
    mode: str = "live"
    rate: float = 100.0
    agent_delay_s: float = 0.2
    drain_window: int = 64
    state_dir: Path | None = None
    gateway_id: str = GATEWAY_ID
    #: More environment for every gateway process (a state DSN, a lease TTL, ...).
    gateway_env: Mapping[str, str] = attrs.field(factory=dict)

    secret: str = attrs.field(factory=lambda: secrets.token_urlsafe(32))
    journal_path: Path = attrs.field(init=False)
    agent_lines: list[str] = attrs.field(factory=list, init=False)
    connector: Child | None = attrs.field(default=None, init=False)
    gateway: Child | None = attrs.field(default=None, init=False)
    gateways: list[Child] = attrs.field(factory=list, init=False)
    _connectors: list[Child] = attrs.field(factory=list, init=False)
    port: int = attrs.field(default=0, init=False)
    url: str = attrs.field(default="", init=False)

    # Running view of the journal, refreshed by polling.
    _reader: JournalReader = attrs.field(init=False)
    records: int = attrs.field(default=0, init=False)
    posts: int = attrs.field(default=0, init=False)
    answered: Counter[int] = attrs.field(factory=Counter, init=False)
    done: bool = attrs.field(default=False, init=False)
    unacked: set[str] = attrs.field(factory=set, init=False)
    _acked: set[str] = attrs.field(factory=set, init=False)
    _asked: set[str] = attrs.field(factory=set, init=False)
    _posted: set[str] = attrs.field(factory=set, init=False)
    idles: int = attrs.field(default=0, init=False)
    holds: int = attrs.field(default=0, init=False)
    gates: int = attrs.field(default=0, init=False)
    live: set[int] = attrs.field(factory=set, init=False)
    started: set[int] = attrs.field(factory=set, init=False)
    ended: set[int] = attrs.field(factory=set, init=False)
    _agent_seen: int = attrs.field(default=0, init=False)
    _progress: tuple[int, int] = attrs.field(default=(0, 0), init=False)
    _moved_at: float = attrs.field(default=0.0, init=False)
    began_at: float = attrs.field(default=0.0, init=False)

    def __attrs_post_init__(self) -> None:
        if self.state_dir is None:
            self.state_dir = self.workdir / "state"
        self.journal_path = self.workdir / "connector.jsonl"
        self._reader = JournalReader(self.journal_path)
        self._moved_at = self.began_at = trio.current_time()

    # -- the journal ------------------------------------------------------------------------

    def refresh(self) -> None:
        """Take in what the journals gained since the last look."""
        for rec in self._reader.poll():
            self.records += 1
            ev = rec["ev"]
            if ev == "post" and rec["op"] in ("send", "follow_up"):
                self.posts += 1
                self._posted.add(rec["rid"])
                n = message_number(rec["content"])
                if n is not None:
                    self.answered[n] += 1
            elif ev == "outbound" and rec["op"] in ("send", "follow_up"):
                self._asked.add(rec["rid"])
            elif ev == "deliver" and rec["bid"] is None:
                self.live.add(rec["n"])
            elif ev == "deliver":
                if rec["bid"] not in self._acked:
                    self.unacked.add(rec["bid"])
            elif ev == "ack":
                self._acked.add(rec["bid"])
                self.unacked.discard(rec["bid"])
            elif ev == "idle":
                self.idles += 1
            elif ev == "held":
                self.holds += 1
            elif ev == "gated":
                self.gates += 1
            elif ev == "done":
                self.done = True
        for line in self.agent_lines[self._agent_seen :]:
            kind, _, number = line.partition(" ")
            if kind == "start" and number.isdigit():
                self.started.add(int(number))
            elif kind == "end" and number.isdigit():
                self.ended.add(int(number))
        self._agent_seen = len(self.agent_lines)
        progress = (self.records, len(self.agent_lines))
        if progress != self._progress:
            self._progress = progress
            self._moved_at = trio.current_time()

    @property
    def pending_sends(self) -> int:
        """Sends the current gateway made that the connector has not performed yet."""
        return len(self._asked - self._posted)

    @property
    def complete(self) -> bool:
        """Every message scheduled, answered, and every buffered delivery acked."""
        return self.done and len(self.answered) >= self.messages and not self.unacked

    def moved(self) -> None:
        """The harness acted (a kill, a restart, a full disk): silence restarts from now."""
        self._moved_at = trio.current_time()

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait for ``predicate`` over the journals; fail on a stall (see ``STALL_S``)."""
        while True:
            self.refresh()
            if predicate():
                return
            for child in self.gateways:
                if not child.alive and not child.killed:
                    raise AssertionError(
                        f"{self.name}: {child.name} exited by itself "
                        f"({child.process.returncode}) while waiting for {what}\n{child.tail()}"
                    )
            gw = self.gateway
            cx = self.connector
            if cx is not None and not cx.alive and not cx.killed:
                raise AssertionError(
                    f"{self.name}: the connector exited by itself ({cx.process.returncode}) "
                    f"while waiting for {what}\n{cx.tail()}"
                )
            if trio.current_time() - self._moved_at > STALL_S:
                raise Stalled(
                    f"{self.name}: nothing moved for {STALL_S:g} s while waiting for {what} "
                    f"(answered {len(self.answered)}/{self.messages}, posts {self.posts}, "
                    f"unacked {len(self.unacked)}, done {self.done})"
                    + (f"\ngateway stderr tail:\n{gw.tail()}" if gw is not None else "")
                )
            # Other processes write these files; there is nothing to wait on but the disk.
            await trio.sleep(POLL_S)

    def tally(self) -> Tally:
        """The exact counts, recomputed from the whole journal file and the agent lines."""
        return tally(self.messages, read_records(self.journal_path), self.agent_lines)

    # -- processes --------------------------------------------------------------------------

    async def _spawn(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        out: list[str],
        *,
        stdin: int = subprocess.DEVNULL,
    ) -> Child:
        process = await trio.lowlevel.open_process(
            argv,
            env=dict(env),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        child = Child(name, process, out)

        async def pump_both() -> None:
            try:
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(_pump, process.stdout, out)
                    pumps.start_soon(_pump, process.stderr, child.err)
            finally:
                child.eof.set()

        self.nursery.start_soon(pump_both)
        return child

    async def start_connector(self) -> Child:
        """Start (or restart, on the same port) the connector process."""
        argv = [
            sys.executable,
            str(HERE / "connector_proc.py"),
            "--journal",
            str(self.journal_path),
            "--port",
            str(self.port),
            "--gateway-id",
            self.gateway_id,
            "--count",
            str(self.messages),
            "--mode",
            self.mode,
            "--rate",
            str(self.rate),
            "--drain-window",
            str(self.drain_window),
        ]
        env = dict(os.environ, FAULT_SECRET=self.secret)
        out: list[str] = []
        child = await self._spawn("connector", argv, env, out, stdin=subprocess.PIPE)
        with trio.fail_after(GUARD_S):
            while not out:
                if child.eof.is_set():
                    raise AssertionError(f"the connector did not start:\n{child.tail()}")
                await trio.sleep(POLL_S)  # a pipe another process writes
        self.url = out[0].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        self.connector = child
        self._connectors.append(child)
        self.moved()
        return child

    async def hold_live(self) -> None:
        """Hold the connector's schedule and wait until every live delivery reached the agent.

        A live message has no ack: the gateway promises it only from its durable admission
        on (its turn starts after that), so a ``kill -9`` is aimed at a gateway that has
        started every live message it was sent, and none is still in flight on the socket.
        """
        self.refresh()
        holds = self.holds
        await self.tell("hold")
        await self.until(
            lambda: (self.holds > holds or self.done) and self.live <= self.started,
            "the schedule held and every live delivery started",
        )

    def live_mid_turn(self) -> int:
        """Live deliveries whose turn has started and not ended (as far as seen now)."""
        self.refresh()
        return len((self.live & self.started) - self.ended)

    async def resume(self) -> None:
        """Let a held schedule go on."""
        await self.tell("resume")

    async def gate_sends(self, pending: int) -> None:
        """Have the connector leave sends unanswered until ``pending`` of the current
        gateway's replies wait for an answer (the turns go on making them)."""
        self.refresh()
        gates = self.gates
        await self.tell("gate")
        await self.until(
            lambda: self.gates > gates and self.pending_sends >= pending,
            f"{pending} sends pending at a gated connector",
        )

    async def open_sends(self) -> None:
        """Have the connector answer sends again (a restarted connector starts open)."""
        await self.tell("open")

    async def tell(self, command: str) -> None:
        """Send one command line to the connector process (see ``connector_proc.py``)."""
        assert self.connector is not None and self.connector.process.stdin is not None
        await self.connector.process.stdin.send_all(f"{command}\n".encode())

    async def kill_connector(self, signum: int = signal.SIGKILL) -> int:
        """Stop the connector process with ``signum``; its exit status."""
        child = self.connector
        assert child is not None
        child.killed = True
        child.process.send_signal(signum)
        with trio.fail_after(EXIT_BOUND_S):
            code = await child.process.wait()
            await child.eof.wait()
        if child.process.stdin is not None:
            await child.process.stdin.aclose()
        self.connector = None
        self.moved()
        return code

    def _gateway_env(self, state_dir: Path) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_RELAY_", "RELAY_"))
        }
        env.update(
            {
                "GATEWAY_RELAY_ID": self.gateway_id,
                "GATEWAY_RELAY_SECRET": self.secret,
                "RELAY_STATE_DIR": str(state_dir),
                "GATEWAY_RELAY_BACKOFF_BASE_S": "0.05",
                "GATEWAY_RELAY_BACKOFF_CAP_S": "0.5",
                "FAULT_AGENT_DELAY_S": str(self.agent_delay_s),
                "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(
                    os.pathsep
                ),
            }
        )
        env.update(self.gateway_env)
        return env

    async def start_gateway(self) -> Child:
        """Start a gateway process over the run's state dir (the previous one must be gone)."""
        assert self.gateway is None or not self.gateway.alive
        assert self.state_dir is not None
        self.refresh()
        self._asked.clear()  # pending sends are counted per gateway process
        child = await self.launch_gateway(self.state_dir)
        self.gateway = child
        return child

    async def launch_gateway(self, state_dir: Path, name: str = "gateway") -> Child:
        """Start one more gateway process over ``state_dir``, next to any still running."""
        level = os.environ.get("FAULT_GATEWAY_LOG_LEVEL", "info")
        argv = [
            sys.executable,
            "-m",
            "relay_runtime",
            "--log-level",
            level,
            "run",
            "--relay-url",
            self.url,
            "--trust",
            "open",
            "--agent",
            "fault_agent:slow_reply",
        ]
        child = await self._spawn(name, argv, self._gateway_env(state_dir), self.agent_lines)
        self.gateways.append(child)
        self.moved()
        return child

    def gateway_ready(self) -> bool:
        """Whether the current gateway process has logged that it is ready."""
        return self.gateway is not None and self.gateway.saw(READY)

    async def at_posts(self, posts: int, *, pending_sends: int = 0) -> None:
        """Wait for ``posts`` posts with the current gateway ready (and sends pending)."""

        def reached() -> bool:
            return (
                self.posts >= posts and self.pending_sends >= pending_sends and self.gateway_ready()
            )

        pending = f" with {pending_sends} sends pending" if pending_sends else ""
        await self.until(reached, f"{posts} posts{pending}")

    async def ready(self) -> None:
        """Wait until the current gateway logged that it is ready."""
        await self.until(self.gateway_ready, "the gateway to be ready")

    async def stop_gateway(
        self, signum: int, child: Child | None = None
    ) -> tuple[int | None, float]:
        """Signal the gateway (``child``, else the current one) and wait for its exit:
        ``(status, seconds)``.

        ``status`` is ``None`` if it had not exited ``EXIT_BOUND_S`` after the signal (it is
        then killed with SIGKILL, so the scenario can go on).
        """
        gw = child or self.gateway
        assert gw is not None
        gw.killed = True
        start = trio.current_time()
        gw.process.send_signal(signum)
        code: int | None = None
        with trio.move_on_after(EXIT_BOUND_S):
            code = await gw.process.wait()
        elapsed = trio.current_time() - start
        if code is None:
            gw.process.send_signal(signal.SIGKILL)
            await gw.process.wait()
        with trio.fail_after(GUARD_S):
            await gw.eof.wait()
        self.moved()
        return code, elapsed

    async def wait_complete(self) -> None:
        """Wait for every message to be scheduled, answered, and acked if buffered."""
        await self.until(lambda: self.complete, "every message answered and acked")

    async def finish(self) -> tuple[int | None, float]:
        """Wait for every message to be answered and acked, then SIGTERM the gateway."""
        await self.wait_complete()
        return await self.stop_gateway(signal.SIGTERM)

    async def shutdown(self) -> None:
        """Kill whatever still runs (the way out of a scenario, passing or not)."""
        for child in [*self.gateways, *self._connectors]:
            if child.alive:
                child.killed = True
                child.process.send_signal(signal.SIGKILL)
        with trio.move_on_after(GUARD_S, shield=True):
            for child in [*self.gateways, *self._connectors]:
                await child.process.wait()
                await child.eof.wait()
                if child.process.stdin is not None:
                    await child.process.stdin.aclose()
        self.refresh()
        # Kept next to the journal: what to read when a scenario fails.
        (self.workdir / "agent.log").write_text("\n".join(self.agent_lines) + "\n")
        for k, gw in enumerate(self.gateways, 1):
            (self.workdir / f"gateway-{k}.log").write_text("\n".join(gw.err) + "\n")
        for k, child in enumerate(self._connectors, 1):
            (self.workdir / f"connector-{k}.log").write_text("\n".join(child.err) + "\n")


@asynccontextmanager
async def fault_run(name: str, workdir: Path, **options: Any) -> AsyncIterator[FaultRun]:
    """A :class:`FaultRun` whose processes are all killed on the way out."""
    async with trio.open_nursery() as nursery:
        run = FaultRun(name=name, workdir=workdir, nursery=nursery, **options)
        try:
            yield run
        finally:
            await run.shutdown()
            nursery.cancel_scope.cancel()
