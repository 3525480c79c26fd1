"""The state store's cost per message, measured in process (issue 15): SQL statements, rows
written, bytes written and the worker thread's CPU for a steady-state workload.

Each of ``--window`` tasks loops over what the dispatcher does for one buffered delivery:
``claim_turns`` (written behind), a few scheduler steps (the turn), ``complete_turn``
committed on return (an ``inbound_ack`` depends on it); a recorder task commits what is
written behind like the dispatcher's (``wait_queued``, 50 ms, ``flush``). The store is
warmed up past its bounds first (``--dedupe-max`` completions remembered, ``--turns-max``
turn records kept), so every message also evicts a claim and prunes a turn, as in a
long-running gateway. Counted per message over ``--count`` messages:

- statements SQLite ran (``set_trace_callback``; an ``executemany`` counts each row),
  savepoint statements among them, and rows changed (``total_changes``);
- bytes the process wrote (``/proc/self/io`` ``wchar``: the WAL and its checkpoints);
- CPU of the thread that ran each batch (``time.thread_time`` around ``_run_batch``).

``--live`` keeps a ~475 B frame with each turn (the durable inbox of a live delivery).
Usage: ``python scripts/bench_state.py [--count 20000] [--window 64] [--live]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from typing import Any

import trio

from relay_runtime._state import ClaimRequest, StateDB, _engine

FRAME = json.dumps({"type": "inbound", "pad": "x" * 420})


def wchar() -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


class Meter:
    """Counts what the store's worker thread does while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.statements: collections.Counter[str] = collections.Counter()
        self.cpu = 0.0
        self.batches = 0
        self.ops = 0

    def trace(self, sql: str) -> None:
        if self.on:
            words = sql.split(None, 2)
            head = words[0].upper()
            if head in ("INSERT", "UPDATE", "DELETE"):
                for word in sql.replace("(", " ").split():
                    if word.startswith("relay_"):
                        head = f"{head} {word}"
                        break
            self.statements[head] += 1

    def wrap(self, run_batch: Any) -> Any:
        def timed(conn: Any, ops: list[Any]) -> None:
            start = time.thread_time()
            try:
                run_batch(conn, ops)
            finally:
                if self.on:
                    self.cpu += time.thread_time() - start
                    self.batches += 1
                    self.ops += len(ops)

        return timed


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    meter = Meter()
    _engine._run_batch = meter.wrap(_engine._run_batch)  # type: ignore[attr-defined]
    now = 1_700_000_000.0
    with tempfile.TemporaryDirectory() as state_dir:
        db = await StateDB.open(
            state_dir, now=now, dedupe_max=args.dedupe_max, turns_max=args.turns_max
        )
        async with db:
            db._conn.set_trace_callback(meter.trace)  # type: ignore[attr-defined]
            seq = iter(range(10**9))
            inbound = FRAME if args.live else None

            async def one() -> None:
                n = next(seq)
                ((claim, turn_id),) = await db.claim_turns(
                    [ClaimRequest(f"s:{n % 97}", ("tg", "c", f"m{n}"), f"b{n}", inbound)],
                    now + n * 1e-4,
                )
                for _ in range(args.steps):
                    await trio.lowlevel.checkpoint()
                await db.complete_turn(claim.handle, turn_id, "completed", now + n * 1e-4)

            async def worker(count: int) -> None:
                for _ in range(count):
                    await one()

            async def recorder() -> None:
                while True:
                    await db.wait_queued()
                    await trio.sleep(0.05)
                    await db.flush()

            async def run(total: int) -> None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(recorder)
                    async with trio.open_nursery() as workers:
                        for i in range(args.window):
                            share = total // args.window + (i < total % args.window)
                            workers.start_soon(worker, share)
                    await db.flush()
                    nursery.cancel_scope.cancel()

            await run(args.warmup or args.turns_max + args.dedupe_max)
            changes0, wrote0 = db._conn.total_changes, wchar()  # type: ignore[attr-defined]
            meter.on = True
            wall = time.perf_counter()
            await run(args.count)
            wall = time.perf_counter() - wall
            meter.on = False
            changes = db._conn.total_changes - changes0  # type: ignore[attr-defined]
            wrote = wchar() - wrote0
    n = args.count
    return {
        "messages": n,
        "statements/msg": round(sum(meter.statements.values()) / n, 2),
        "savepoint stmts/msg": round(
            sum(v for k, v in meter.statements.items() if k in ("SAVEPOINT", "RELEASE")) / n, 2
        ),
        "rows changed/msg": round(changes / n, 2),
        "bytes written/msg": round(wrote / n),
        "worker CPU us/msg": round(meter.cpu / n * 1e6, 1),
        "ops/batch": round(meter.ops / max(meter.batches, 1), 1),
        "msgs/batch": round(n / max(meter.batches, 1), 1),
        "wall msg/s": round(n / wall),
        "by statement/msg": {
            k: round(v / n, 3) for k, v in sorted(meter.statements.items(), key=lambda kv: -kv[1])
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="scheduler steps per turn")
    parser.add_argument("--dedupe-max", type=int, default=2_000)
    parser.add_argument("--turns-max", type=int, default=4_000)
    parser.add_argument("--warmup", type=int, default=0, help="default: both bounds")
    parser.add_argument("--live", action="store_true", help="keep a frame with each turn")
    args = parser.parse_args()
    print(json.dumps(trio.run(drive, args), indent=1))


if __name__ == "__main__":
    main()
