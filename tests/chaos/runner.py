"""One replayable chaos run: a real gateway and the reference connector, in memory, under a seed.

:func:`run_chaos` runs ``messages`` messages over 200 sessions through the connector's
ack-gated buffer while the connector keeps dropping the socket at seeded-random frames,
answers each ``send`` after a seeded-random virtual delay, and drops the socket instead of
acking half of the ``going_idle`` frames of a few suspend episodes; the outbox bound, the
turn limit and the connector's drain window are drawn per seed too. The gateway is the real
one (``run_gateway``, the SQLite state db on a real file, trio-websocket frames); only the
transport is a :func:`trio.testing.memory_stream_pair` per dial.

Everything runs under :func:`relay_runtime.testing.run_deterministic`: virtual time
(``MockClock(autojump_threshold=0)``), trio's scheduler seeded, the state db's thread calls
run inline with seeded virtual latency. So a seed decides every fault and every interleaving,
and the same seed gives the same :attr:`ChaosOutcome.fingerprint` (a digest of what the
connector received and sent, when, on which connection, and of the order the agent ran the
turns). No wall-clock wait decides anything: the run is bounded in virtual time, and a run
that stops making progress reaches that bound at once.

``python -m tests.chaos.runner SEED [MESSAGES]`` prints one run's outcome (replay a failure
outside pytest).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from protocol import GoingIdle, Hello, InboundAck, Interrupt, MessageEvent, Outbound, SessionSource
from relay_runtime._gateway import AdmitAll, Gateway, run_gateway
from relay_runtime.config import GatewayConfig
from relay_runtime.connector import Connection, Delay, ReferenceConnector
from relay_runtime.testing import MEMORY_RELAY_URL, reset_memory_dialer, run_deterministic

GATEWAY_ID = "gw-chaos"
SESSIONS = 200
DROP_EVERY = 200
IDLE_EPISODES = 4
#: Virtual seconds a whole run may take (it needs well under a minute of virtual time; a
#: stuck run gets here at once, since the clock jumps from timer to timer).
RUN_BOUND_S = 3600.0
#: Virtual seconds, once every turn has started and drops have stopped, for the last acks
#: and the replies still in the outbox to arrive (several outbound timeouts' worth).
SETTLE_S = 300.0
#: Virtual latencies of the state db's "thread" calls and of the connector's answer to a
#: ``send``, picked per call by the seed.
THREAD_LATENCIES = (0.0, 0.0, 0.0001, 0.001, 0.004)
SEND_DELAYS = (0.0, 0.001, 0.002, 0.005, 0.02)
OUTBOX_MAX = (64, 1000)
MAX_CONCURRENT_TURNS = (16, 64)
DRAIN_WINDOWS = (16, 64)
_REQUEST_ID = re.compile(r"\b[0-9a-f]{32}\b")


@attrs.frozen
class ChaosOutcome:
    """What one run did; :attr:`problems` is empty when every guarantee held."""

    seed: int
    messages: int
    fingerprint: str
    problems: tuple[str, ...]
    drops: int
    idle_frames: int
    idle_drops: int
    handshakes: int
    duplicate_outbounds: int
    virtual_s: float
    stats: dict[str, Any] = attrs.field(eq=False)

    def summary(self) -> str:
        """One line for logs: the seed, the faults injected, the fingerprint."""
        return (
            f"chaos seed {self.seed}: {self.messages} messages, {self.drops} random drops, "
            f"{self.idle_drops}/{self.idle_frames} going_idle drops, {self.handshakes} "
            f"handshakes, {self.duplicate_outbounds} replies re-sent after a drop "
            f"(deduplicated by requestId), {self.virtual_s:.3f} virtual s, "
            f"fingerprint {self.fingerprint[:16]}"
        )


class ChaosConnector(ReferenceConnector):
    """The reference connector, answering sends late and dropping on some ``going_idle``s.

    It keeps the reply ``requestId``s per reply text as ``outbound`` frames arrive, so the
    run can wait for "every message answered" without rescanning every frame.
    """

    def __init__(self, rng: random.Random, **options: Any) -> None:
        super().__init__(on_outbound=self._note_reply, on_going_idle=self._maybe_drop, **options)
        self.rng = rng
        self.idle_frames = 0
        self.idle_drops = 0
        self.replies: defaultdict[str, set[str]] = defaultdict(set)

    def _note_reply(self, conn: Connection, frame: Outbound) -> None:
        content = getattr(frame.action, "content", None)
        if isinstance(content, str):
            self.replies[content].add(frame.request_id)
        if frame.action.OP == "send":
            # Answer this send (or the next one, if this is a repeat) a little late, so drops
            # also land while replies wait for their result.
            self.outcomes.push("send", Delay(self.rng.choice(SEND_DELAYS)))

    async def _maybe_drop(self, conn: Connection) -> bool:
        """Drop the socket instead of acking half of the ``going_idle`` frames."""
        self.idle_frames += 1
        if self.rng.random() < 0.5:
            self.idle_drops += 1
            await self.drop(conn.gateway_id)
            return True
        return False


class Ledger:
    """What the agent saw: turns per message and the order of turns in each session."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.turns: Counter[str] = Counter()
        self.order: defaultdict[str, list[int]] = defaultdict(list)
        self.log: list[str] = []
        self.done = 0

    async def agent(self, turn: Any) -> str:
        text: str = turn.text
        session, seq = _parse(text)
        self.turns[text] += 1
        self.order[session].append(seq)
        self.log.append(f"{trio.current_time():.6f} turn {text}")
        self.done += 1
        # Some turns think for a moment (virtual time), so turns overlap drops and idles.
        think = self.rng.choice((0.0, 0.0, 0.0, 0.001, 0.01))
        if think:
            await trio.sleep(think)
        else:
            await trio.lowlevel.checkpoint()
        return f"re {text}"


def _text(session: int, seq: int) -> str:
    return f"s{session:03d} n{seq:05d}"


def _parse(text: str) -> tuple[str, int]:
    session, number = text.removeprefix("re ").split()
    return session, int(number[1:])


def _event(session: int, seq: int) -> MessageEvent:
    message_id = f"c{seq}"
    return MessageEvent(
        text=_text(session, seq),
        message_id=message_id,
        source=SessionSource(
            platform="discord",
            chat_id=f"{7000 + session}",
            chat_type="dm",
            user_id=f"{9000 + session}",
            user_name=f"user{session}",
            message_id=message_id,
        ),
    )


def run_chaos(seed: int, messages: int, state_dir: Path | None = None) -> ChaosOutcome:
    """One chaos run of ``messages`` messages under ``seed``; never raises for a failed check.

    ``state_dir`` holds the state db (default: a fresh temporary directory, in RAM when
    /dev/shm is writable). Checks that fail are listed in :attr:`ChaosOutcome.problems`.
    """
    rng = random.Random(seed)
    latencies = random.Random(rng.random())
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = stack.enter_context(_state_dir())
        return run_deterministic(
            _chaos_run,
            seed,
            rng,
            messages,
            state_dir,
            seed=seed,
            thread_latency=lambda: latencies.choice(THREAD_LATENCIES),
        )


@contextlib.contextmanager
def _state_dir() -> Iterator[Path]:
    """A fresh directory for the SQLite state db, in RAM (/dev/shm) when there is one.

    The state db commits with ``synchronous=FULL``; on a disk the fsyncs would cost real
    time for nothing: what is under test here is the protocol, not the disk.
    """
    shm = Path("/dev/shm")
    where = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="relay-chaos-", dir=where) as tmp:
        yield Path(tmp)


async def _idle_episodes(
    connector: ChaosConnector, gateway: Gateway, ledger: Ledger, marks: list[int]
) -> None:
    """Suspend through ``going_idle`` a few times while messages keep flowing.

    Each episode waits for its mark (turns done), then asks for a suspend until a
    ``going_idle`` really reached the connector: a suspend is a no-op while the gateway is
    between sockets, and the ``going_idle`` of one may be cut off by a drop.
    """
    supervisor = gateway.supervisor
    for mark in marks:

        def reached(mark: int = mark) -> bool:
            return ledger.done >= mark

        await connector.wait_for(reached)
        seen = connector.idle_frames
        while connector.idle_frames == seen:
            await supervisor.wait_ready()
            await supervisor.suspend()
            if connector.idle_frames == seen:
                await trio.sleep(0.001)


async def _chaos_run(seed: int, rng: random.Random, messages: int, state_dir: Path) -> ChaosOutcome:
    secret = f"chaos-secret-{seed}"
    # Bounds drawn per seed: small ones put the outbox, the turn limiter and the drain
    # window under pressure, the defaults are what production runs.
    outbox_max = rng.choice(OUTBOX_MAX)
    max_turns = rng.choice(MAX_CONCURRENT_TURNS)
    connector = ChaosConnector(
        random.Random(rng.random()),
        secrets={GATEWAY_ID: secret},
        always_buffer=True,
        drain_window=rng.choice(DRAIN_WINDOWS),
        buffer_prefix=f"chaos{seed}",
    )
    ledger = Ledger(random.Random(rng.random()))
    sessions = [rng.randrange(SESSIONS) for _ in range(messages)]
    sessions[: min(SESSIONS, messages)] = range(min(SESSIONS, messages))
    expected: defaultdict[str, list[int]] = defaultdict(list)
    for seq, session in enumerate(sessions):
        expected[f"s{session:03d}"].append(seq)
    drop_rng = random.Random(rng.random())
    marks = sorted(rng.sample(range(messages // 10, messages * 8 // 10), IDLE_EPISODES))

    gateway: Gateway | None = None
    settled = False
    with trio.move_on_after(RUN_BOUND_S) as bound:
        async with trio.open_nursery() as connector_nursery:
            config = GatewayConfig(
                relay_url=MEMORY_RELAY_URL,
                gateway_id=GATEWAY_ID,
                secret=secret,
                state_dir=state_dir,
                # Redial fast: with a drop every ~200 frames no connection is "stable" at the
                # default 60 s, and the ladder would climb to its cap on every drop.
                backoff_base_s=0.001,
                backoff_cap_s=0.005,
                stable_after_s=0.2,
                max_concurrent_turns=max_turns,
                outbox_max=outbox_max,
            )
            async with trio.open_nursery() as nursery:
                gateway = await nursery.start(
                    _gateway,
                    config,
                    ledger.agent,
                    reset_memory_dialer(connector, connector_nursery),
                )
                for seq, session in enumerate(sessions):
                    await connector.inject(_event(session, seq), gateway_id=GATEWAY_ID)
                connector.drop_randomly(drop_rng, DROP_EVERY)
                nursery.start_soon(_idle_episodes, connector, gateway, ledger, marks)
                await connector.wait_for(lambda: ledger.done >= messages)
                # Every turn has started: no more drops. A delivery whose ack a drop cut off is
                # replayed on the re-dial that drop caused, so from here every message must
                # be acked (its turn completed, its reply confirmed or queued) and every
                # reply posted (the outbox re-sends those a drop cut off) with no further
                # fault; what waits for one is stuck.
                connector.stop_dropping()
                with trio.move_on_after(SETTLE_S):
                    await connector.wait_for(
                        lambda: (
                            not connector.buffered(GATEWAY_ID)
                            and len(_posted(connector)) >= messages
                        )
                    )
                    settled = True
                nursery.cancel_scope.cancel()
            connector_nursery.cancel_scope.cancel()

    assert gateway is not None
    problems = _check(connector, ledger, sessions, expected, messages)
    if bound.cancelled_caught:
        problems.insert(
            0,
            f"not finished in {RUN_BOUND_S} virtual s: {ledger.done} turns, "
            f"{len(connector.replies)} replies, {connector.chaos_drops} drops, "
            f"{len(connector.buffered(GATEWAY_ID))} still buffered",
        )
    elif not settled:
        unacked = [entry.buffer_id for entry in connector.buffered(GATEWAY_ID)]
        problems.insert(
            0,
            f"{SETTLE_S} virtual s after the last turn started: {len(unacked)} deliveries "
            f"never acked (e.g. {unacked[:3]}), {messages - len(_posted(connector))} "
            "replies not posted",
        )
    return ChaosOutcome(
        seed=seed,
        messages=messages,
        fingerprint=_fingerprint(connector, ledger),
        problems=tuple(problems),
        drops=connector.chaos_drops,
        idle_frames=connector.idle_frames,
        idle_drops=connector.idle_drops,
        handshakes=gateway.supervisor.stats.handshakes,
        duplicate_outbounds=connector.duplicate_outbounds,
        virtual_s=trio.current_time(),
        stats=gateway.stats,
    )


def _check(
    connector: ChaosConnector,
    ledger: Ledger,
    sessions: list[int],
    expected: dict[str, list[int]],
    messages: int,
) -> list[str]:
    """Every guarantee the run must keep, as a list of what did not hold."""
    problems: list[str] = []
    missing = [t for t in (_text(s, n) for n, s in enumerate(sessions)) if not ledger.turns[t]]
    if missing:
        problems.append(f"{len(missing)} messages never ran, e.g. {missing[:3]}")
    twice = {t: n for t, n in ledger.turns.items() if n > 1}
    if twice:
        problems.append(f"{len(twice)} messages ran more than once, e.g. {list(twice)[:3]}")
    if dict(ledger.order) != dict(expected):
        broken = sorted(s for s in expected if ledger.order.get(s) != expected[s])
        problems.append(f"per-session order broken in {len(broken)} sessions, e.g. {broken[:3]}")
    doubled = {c: ids for c, ids in connector.replies.items() if len(ids) > 1}
    if doubled:
        problems.append(f"{len(doubled)} messages got two distinct replies")
    posted = _posted(connector)
    if not set(posted) <= set(connector.replies):
        problems.append("a reply was posted that was never sent")
    twice_posted = {c: n for c, n in posted.items() if n > 1}
    if twice_posted:
        problems.append(f"{len(twice_posted)} replies posted twice")
    unanswered = sorted(f"re {t}" for t in ledger.turns if f"re {t}" not in posted)
    if unanswered:
        problems.append(
            f"{len(unanswered)} of {messages} turns ran but their reply never reached the "
            f"chat, e.g. {unanswered[:3]}"
        )
    # The run really was chaotic: many drops, including some at going_idle.
    if connector.chaos_drops < messages // 500:
        problems.append(f"only {connector.chaos_drops} drops")
    if connector.idle_frames < 1:
        problems.append("no going_idle was sent")
    return problems


def _posted(connector: ReferenceConnector) -> Counter[str]:
    """How many times each reply text was posted into its chat."""
    return Counter(m.content for m in connector.messages.values())


def _fingerprint(connector: ReferenceConnector, ledger: Ledger) -> str:
    """A digest of the run's observable history, with random ``requestId``s renumbered.

    Each ``requestId`` (a random uuid4) becomes its order of first appearance, so two runs
    that did the same things in the same order, at the same virtual times, on the same
    connections, have the same digest.
    """
    ids: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"#{ids.setdefault(match.group(0), len(ids))}"

    digest = hashlib.sha256()
    for received in connector.received:
        frame = received.frame
        if isinstance(frame, Outbound):
            what = f"outbound {frame.request_id} {frame.action.OP} {getattr(frame.action, 'content', '')}"
        elif isinstance(frame, InboundAck):
            what = f"ack {frame.buffer_id}"
        elif isinstance(frame, Hello | GoingIdle | Interrupt):
            what = type(frame).__name__
        else:
            what = repr(frame)
        line = f"in {received.at:.6f} c{received.connection_id} {what}"
        digest.update(_REQUEST_ID.sub(number, line).encode() + b"\n")
    for sent in connector.sent:
        line = f"out c{sent.connection_id} {sent.text}"
        digest.update(_REQUEST_ID.sub(number, line).encode() + b"\n")
    for line in ledger.log:
        digest.update(line.encode() + b"\n")
    digest.update(f"drops {connector.chaos_drops}".encode())
    return digest.hexdigest()


async def _gateway(
    config: GatewayConfig,
    agent: Any,
    dialer: Any,
    *,
    task_status: trio.TaskStatus[Gateway],
) -> None:
    await run_gateway(config, agent, trust=AdmitAll(), dialer=dialer, task_status=task_status)


if __name__ == "__main__":
    outcome = run_chaos(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10_000)
    print(outcome.summary())
    for problem in outcome.problems:
        print("PROBLEM:", problem)
    sys.exit(1 if outcome.problems else 0)
