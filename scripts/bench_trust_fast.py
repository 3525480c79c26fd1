"""The trust engine's per-message cost on the gateway's fast path, as bench_pipeline drives it.

A real SQLite store, the ``careful`` preset, no trust agent, the 64 bench users of
:mod:`scripts.bench_pipeline` all contacts, their views warm; each message is a bench DM
(:func:`bench_pipeline.make_event` with ``delivered_via_relay``). Reports, per ``evaluate``:
CPU µs (median of ``--reps`` loops of ``--count`` messages, process time) and, robust to
machine load, the Python function calls cProfile counts, with the top functions.

    python scripts/bench_trust_fast.py [--count 20000] [--reps 5] [--profile 15]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import SESSIONS, known_user, make_event

from protocol import MessageEvent
from trust import TrustConfig, open_trust_engine
from trust._engine import TrustEngine


def bench_events(count: int) -> list[MessageEvent]:
    """``count`` bench DMs, round robin over the bench sessions, marked relay-delivered."""
    return [
        attrs.evolve(make_event(seq, seq % SESSIONS), delivered_via_relay=True)
        for seq in range(count)
    ]


async def _loop(engine: TrustEngine, events: Sequence[MessageEvent]) -> None:
    for event in events:
        outcome = await engine.evaluate(event)
        if not outcome.run_agent:
            raise RuntimeError(f"bench user denied: {outcome.decision.reason}")


async def _main(count: int, reps: int, profile: int) -> None:
    events = bench_events(count)
    with tempfile.TemporaryDirectory() as state_dir:
        config = TrustConfig(policy="careful", state_dir=state_dir)
        async with open_trust_engine(config) as engine:
            for session in range(SESSIONS):
                await engine.ops.promote(
                    known_user(session), "contact", "local:bench", tier="operator"
                )
            await engine.tail()
            await _loop(engine, events[: SESSIONS * 2])  # warm: every view cached
            cpu: list[float] = []
            for _ in range(reps):
                start = time.process_time()
                await _loop(engine, events)
                cpu.append((time.process_time() - start) / count * 1e6)
            print(
                f"evaluate: {count} msgs x {reps}: CPU µs/msg median "
                f"{statistics.median(cpu):.2f} (min {min(cpu):.2f}, max {max(cpu):.2f})"
            )
            prof = cProfile.Profile()
            prof.enable()
            await _loop(engine, events)
            prof.disable()
    stats = pstats.Stats(prof)
    calls = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
    print(f"Python calls per evaluate (cProfile): {calls / count:.1f}")
    if profile:
        per = sorted(
            stats.stats.items(),  # type: ignore[attr-defined]
            key=lambda kv: kv[1][2],
            reverse=True,
        )
        print(f"top {profile} by own time (calls/msg, own µs/msg under the profiler):")
        for (file, line, name), (_cc, nc, tt, _ct, _callers) in per[:profile]:
            where = f"{Path(file).name}:{line}" if line else file
            print(f"  {nc / count:6.2f}  {tt / count * 1e6:7.2f}  {name} ({where})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the loop and print CPU and call counts per message."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--profile", type=int, default=15, help="top N functions (0: none)")
    args = parser.parse_args(argv)
    trio.run(_main, args.count, args.reps, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
