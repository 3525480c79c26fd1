"""The gateway's Python work per message on the turn path, in one process, without sockets
(issue 15).

What it drives is the part of a message's walk that is ours after the codec: the
:class:`~relay_runtime._dispatcher.Dispatcher` admits an ``inbound`` (session key, K_msg,
claim), the session worker runs the turn (the real trust engine, ``careful``, every sender a
contact), the echo agent answers, :meth:`Turn.reply` goes through the real
:class:`~relay_runtime._replies.Replies` and :class:`~relay_runtime._outbound.OutboundRouter`
to a link that encodes each frame (``encode_frame``, as the supervisor's connection does) and
answers the ``outbound`` at once, and the ``inbound_ack`` goes out. The durable record is
the tests' in-memory twin of the state db (``tests.runtime.dispatch_helpers.MemoryState``),
so the state db's own cost (another change's) and the socket are not in the figure.

Nothing here waits on a socket or a thread, so the figures hardly move with the machine's
load: Python function calls per message (``--profile``, cProfile; deterministic) and the
thread CPU time per message (``time.thread_time`` around the counted messages). Under
``valgrind --tool=callgrind`` two runs of different ``--count`` give instructions per
message as the difference of their totals over the difference of their counts.

    python scripts/bench_turn.py [--count 5000] [--reps 3] [--profile N]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import trio
import trio.lowlevel

# The tree measured is the one on PYTHONPATH (run it with PYTHONPATH=<tree>, the tree's own
# ``tests`` package included), so a checkout of an older commit can be measured by this script.
from protocol import (
    Frame,
    Identity,
    Inbound,
    MessageEvent,
    Outbound,
    OutboundResult,
    SessionSource,
    encode_frame,
)
from relay_runtime._dispatcher import Dispatcher
from relay_runtime._outbound import OutboundRouter
from relay_runtime._replies import Replies
from relay_runtime.agents import echo
from tests.runtime.dispatch_helpers import MemoryState

SESSIONS: Final = 64
WARMUP: Final = 300
IDENTITIES: Final = (Identity("discord", "b1"),)


class AnsweringLink:
    """The supervisor as the outbound owner sees it: each frame encoded (as the connection
    does) and an ``outbound`` answered at once (``success``), as a connector would."""

    def __init__(self) -> None:
        self.router = OutboundRouter(self, identities=IDENTITIES, outbound_timeout_s=30.0)
        self.state = "ready"
        self.live = True
        self.acks = 0
        from protocol import placeholder_descriptor

        self._descriptor = placeholder_descriptor("discord")

    def descriptor_for(self, platform: str) -> Any:
        return self._descriptor

    async def send(self, outbound: Outbound) -> str | None:
        encode_frame(outbound)
        self.router.resolve(
            OutboundResult(outbound.request_id, {"success": True, "message_id": "m1"})
        )
        return None

    def send_nowait(self, frame: Frame) -> bool:
        encode_frame(frame)
        self.acks += 1
        return True


def inbound(seq: int) -> Inbound:
    """The ``seq``-th message: one of :data:`SESSIONS` users, each in its own DM."""
    user = str(1000 + seq % SESSIONS)
    source = SessionSource(platform="discord", chat_id=f"dm-{user}", chat_type="dm", user_id=user)
    event = MessageEvent(
        text=f"message {seq}", source=source, message_id=f"m-{seq}", delivered_via_relay=True
    )
    return Inbound(event=event, buffer_id=f"b-{seq}")


async def one_run(count: int, profiler: cProfile.Profile | None) -> dict[str, float]:
    """A fresh dispatcher and trust engine: warm up, then ``count`` messages counted."""
    from relay_runtime._cli.run import open_trust
    from relay_runtime.config import GatewayConfig

    with tempfile.TemporaryDirectory(prefix="bench-turn-") as tmp:
        config = GatewayConfig(
            relay_url="ws://127.0.0.1:1/relay",
            gateway_id="bench",
            secret="x" * 32,
            state_dir=Path(tmp),
            trust="careful",
        )
        async with open_trust(config) as engine:
            ops = engine.ops  # type: ignore[attr-defined]
            for user in range(SESSIONS):
                client = f"discord:{1000 + user}"
                await ops.promote(client, "contact", "local:bench", tier="operator")
            link = AnsweringLink()
            state = MemoryState()
            dispatcher = Dispatcher(
                agent=echo,
                trust=engine,
                replies=Replies(link.router, state),
                outbound=link.router,
                db=state,
                max_concurrent_turns=SESSIONS,
                max_pending_inbound=1000,
                reply_key=state.reply_key,
            )
            async with trio.open_nursery() as nursery:
                send, receive = trio.open_memory_channel[Any](128)
                await nursery.start(dispatcher.run, receive, nursery)

                async def drive(first: int, n: int) -> None:
                    for seq in range(first, first + n):
                        await send.send(inbound(seq))
                    while link.acks < first + n - 1:
                        await trio.lowlevel.checkpoint()

                await drive(1, WARMUP)
                if profiler is not None:
                    profiler.enable()
                began = time.thread_time()
                await drive(WARMUP + 1, count)
                spent = time.thread_time() - began
                if profiler is not None:
                    profiler.disable()
                nursery.cancel_scope.cancel()
    assert link.acks == WARMUP + count, link.acks
    return {"cpu_us": spent * 1e6 / count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="messages counted per run")
    parser.add_argument("--reps", type=int, default=3, help="runs (a fresh dispatcher each)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="cProfile the counted messages: calls per message and the N busiest functions",
    )
    args = parser.parse_args(argv)
    profiler = cProfile.Profile() if args.profile else None
    runs = [trio.run(one_run, args.count, profiler) for _ in range(args.reps)]
    cpu = [run["cpu_us"] for run in runs]
    print(
        f"turn path: {statistics.median(cpu):.1f} us CPU/msg (thread time, {min(cpu):.1f}-"
        f"{max(cpu):.1f}, {args.reps} run(s) of {args.count} messages)"
        + (" (profiled)" if profiler else "")
    )
    if profiler is not None:
        stats = pstats.Stats(profiler)
        table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
        messages = args.count * args.reps
        calls = sum(entry[1] for entry in table.values())
        print(f"turn path: {calls / messages:.1f} function calls/msg")
        rows = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[: args.profile]
        print("   calls/msg  own us/msg  cum us/msg  function")
        for (filename, line, name), (_cc, nc, tt, ct, _callers) in rows:
            where = filename.replace(os.getcwd() + os.sep, "")
            print(
                f"  {nc / messages:10.2f}  {tt * 1e6 / messages:10.2f}  "
                f"{ct * 1e6 / messages:10.2f}  {name} ({where}:{line})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
