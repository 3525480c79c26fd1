"""Chaos: 10,000 messages over 200 sessions while the connector keeps dropping the socket.

A real gateway (echo-like agent, SQLite state db) dials the reference connector on loopback.
Every message goes through the connector's ack-gated buffer, so a message is only done once
the gateway has acked it. The connector drops the socket (TCP abort) at seeded-random points,
about once every ~200 frames in either direction, so drops land while inbound is in flight,
while replies wait for their ``outbound_result`` (every ``send`` is answered a little late)
and, a few times, while the gateway is going idle. At the end:

* nothing lost — every message ran its turn and its reply reached the connector;
* no duplicate turns — the agent ran once per message (RC §7.3);
* no duplicate replies — one reply ``requestId`` per message (a ``send`` re-submitted after a
  drop reuses its ``requestId``, RC §6.2, and the connector deduplicates on it), and each
  reply posted into its chat once;
* per-session order — each session's turns ran in the order the messages were injected.

The seed is random per run and printed on failure; ``RELAY_CHAOS_SEED=<n>`` replays a run.
Real sockets, so no ``autojump_clock``; everything is bounded by ``fail_after``.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from protocol.events import MessageEvent, SessionSource
from protocol.frames import Outbound
from relay_runtime.config import GatewayConfig
from relay_runtime.connector import Connection, Delay, ReferenceConnector
from relay_runtime.gateway import AdmitAll, Gateway, run_gateway

GATEWAY_ID = "gw-chaos"
MESSAGES = int(os.environ.get("CHAOS_N", "10000"))
SESSIONS = 200
DROP_EVERY = 200
IDLE_EPISODES = 4
#: Wall-clock bound on the run (the CI budget is 60 s on 2 cores), and on the final wait
#: for replies re-sent from the outbox.
RUN_TIMEOUT_S = 50.0
SETTLE_S = 10.0


def _seed() -> int:
    given = os.environ.get("RELAY_CHAOS_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


class ChaosConnector(ReferenceConnector):
    """The reference connector, also dropping the socket on some ``going_idle`` frames.

    It keeps the reply ``requestId``s per reply text as ``outbound`` frames arrive, so the
    test can wait for "every message answered" without rescanning every frame.
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

    def __init__(self) -> None:
        self.turns: Counter[str] = Counter()
        self.order: defaultdict[str, list[int]] = defaultdict(list)
        self.done = 0

    async def agent(self, turn: Any) -> str:
        text: str = turn.text
        session, seq = _parse(text)
        self.turns[text] += 1
        self.order[session].append(seq)
        self.done += 1
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


async def _idle_episodes(
    connector: ChaosConnector, gateway: Gateway, ledger: Ledger, rng: random.Random
) -> None:
    """Suspend through ``going_idle`` a few times while messages keep flowing."""
    marks = sorted(rng.sample(range(MESSAGES // 10, MESSAGES * 8 // 10), IDLE_EPISODES))
    for mark in marks:

        def reached(mark: int = mark) -> bool:
            return ledger.done >= mark

        await connector.wait_for(reached)
        await gateway.supervisor.suspend()  # False (no-op) when not READY just now


def test_chaos_no_loss_no_duplicates_order_kept(tmp_path: Path) -> None:
    # Its own trio.run (not a pytest-trio test): the state dir's context must wrap the run,
    # and a failed check reaches pytest as itself, not inside the test nursery's group.
    with _state_dir(tmp_path) as state_dir:
        trio.run(_chaos_run, state_dir)


@contextlib.contextmanager
def _state_dir(tmp_path: Path) -> Iterator[Path]:
    """A real SQLite directory in RAM when there is one (/dev/shm), else ``tmp_path``.

    The state db commits with ``synchronous=FULL``: on a disk, three fsyncs per message would
    make 10,000 messages overrun the CI budget; what is under test here is the protocol.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="relay-chaos-", dir=shm) as tmp:
        yield Path(tmp)


async def _chaos_run(state_dir: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    secret = secrets.token_urlsafe(32)
    connector = ChaosConnector(
        random.Random(rng.random()),
        secrets={GATEWAY_ID: secret},
        always_buffer=True,
        drain_window=64,
    )
    # Answer every send late, so drops also land while replies wait for their result.
    connector.outcomes.set("send", Delay(0.002))
    ledger = Ledger()
    sessions = [rng.randrange(SESSIONS) for _ in range(MESSAGES)]
    sessions[:SESSIONS] = range(SESSIONS)  # every session gets at least one message
    expected: defaultdict[str, list[int]] = defaultdict(list)
    for seq, session in enumerate(sessions):
        expected[f"s{session:03d}"].append(seq)

    with trio.move_on_after(RUN_TIMEOUT_S) as deadline:
        async with trio.open_nursery() as nursery:
            await nursery.start(connector.serve, "127.0.0.1", 0)
            config = GatewayConfig(
                relay_url=connector.base_url,
                gateway_id=GATEWAY_ID,
                secret=secret,
                state_dir=state_dir,
                # Redial fast: with a drop every ~200 frames no connection is "stable" at the
                # default 60 s, and the ladder would climb to its cap on every drop.
                backoff_base_s=0.001,
                backoff_cap_s=0.005,
                stable_after_s=0.2,
                max_concurrent_turns=64,
            )
            gateway: Gateway = await nursery.start(_gateway, config, ledger.agent)
            for seq, session in enumerate(sessions):
                await connector.inject(_event(session, seq), gateway_id=GATEWAY_ID)
            connector.drop_randomly(random.Random(rng.random()), DROP_EVERY)
            nursery.start_soon(
                _idle_episodes, connector, gateway, ledger, random.Random(rng.random())
            )
            # Every message acked: its turn completed, its reply confirmed or in the outbox.
            await connector.wait_for(
                lambda: ledger.done >= MESSAGES and not connector.buffered(GATEWAY_ID)
            )
            connector.stop_dropping()
            # Replies cut off by a drop are re-sent from the outbox: give them a moment.
            with trio.move_on_after(SETTLE_S):
                await connector.wait_for(lambda: len(_posted(connector)) >= MESSAGES)
            nursery.cancel_scope.cancel()

    where = f"(seed {seed}; replay with RELAY_CHAOS_SEED={seed})"
    assert not deadline.cancelled_caught, (
        f"not finished in {RUN_TIMEOUT_S} s: {ledger.done} turns, "
        f"{len(connector.replies)} replies, {connector.chaos_drops} drops, "
        f"{len(connector.buffered(GATEWAY_ID))} still buffered, "
        f"gateway {gateway.stats} {where}"
    )
    missing = [t for t in (_text(s, n) for n, s in enumerate(sessions)) if not ledger.turns[t]]
    assert not missing, f"{len(missing)} messages never ran, e.g. {missing[:3]} {where}"
    twice = {t: n for t, n in ledger.turns.items() if n > 1}
    assert not twice, f"{len(twice)} messages ran more than once, e.g. {list(twice)[:3]} {where}"
    assert dict(ledger.order) == dict(expected), f"per-session order broken {where}"

    replies = connector.replies
    doubled = {c: ids for c, ids in replies.items() if len(ids) > 1}
    assert not doubled, f"{len(doubled)} messages got two distinct replies {where}"
    posted = _posted(connector)
    assert set(posted) <= set(replies), f"a reply was posted that was never sent {where}"
    twice_posted = {c: n for c, n in posted.items() if n > 1}
    assert not twice_posted, f"{len(twice_posted)} replies posted twice {where}"
    # The run really was chaotic: many drops, including some at going_idle.
    assert connector.chaos_drops >= MESSAGES // 500, f"only {connector.chaos_drops} drops {where}"
    assert connector.idle_frames >= 1, f"no going_idle was sent {where}"
    unanswered = MESSAGES - len(posted)
    assert not unanswered, (
        f"{unanswered} of {MESSAGES} turns ran but their reply never reached the chat "
        f"(gateway {gateway.replies.stats()}) {where}"
    )
    print(
        f"chaos seed {seed}: {connector.chaos_drops} random drops, "
        f"{connector.idle_drops}/{connector.idle_frames} going_idle drops, "
        f"{gateway.stats['handshakes']} handshakes, "
        f"{connector.duplicate_outbounds} replies re-sent after a drop (deduplicated by "
        f"requestId at the connector)"
    )


def _posted(connector: ReferenceConnector) -> Counter[str]:
    """How many times each reply text was posted into its chat."""
    return Counter(m.content for m in connector.messages.values())


async def _gateway(
    config: GatewayConfig, agent: Any, *, task_status: trio.TaskStatus[Gateway]
) -> None:
    await run_gateway(config, agent, trust=AdmitAll(), task_status=task_status)
