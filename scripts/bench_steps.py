"""Trio task steps per message through the real pipeline, counted in one process (issue 15).

The gateway's single trio thread is its ceiling at saturation, and each task step costs a
trip through trio's scheduler; this script counts them instead of timing them, so the
figure barely depends on the machine's load. One trio run holds

* the **connector**: the reference connector serving on loopback, every delivery buffered
  and ack-gated (``always_buffer``, as ``scripts/bench_raw.py``'s pipeline);
* the **gateway**: :func:`~relay_runtime.run_gateway` with the echo agent and the trust
  engine (``careful``, every bench user a contact), dialled into that connector over TCP;
* the **driver**: the open-loop saturation driver of ``scripts/bench_pipeline.py``
  (:data:`bench_pipeline.SATURATION_WINDOW` messages in flight).

A :class:`trio.abc.Instrument` counts ``before_task_step`` and ``task_scheduled`` per task
name, and the memory channels' sends and receives are counted per calling task; each task
belongs to the side (gateway, connector, driver) whose root task it descends from, so each
side's WebSocket reader task (the gateway's client, the connector's trio-websocket) is
counted on its own side. After a warm-up the counters
are reset, ``--count`` messages are driven, and each figure is divided by the messages
completed. Repeated ``--reps`` times (a fresh pipeline each), the median is printed.

    python scripts/bench_steps.py [--count 2000] [--reps 3] [--top 12] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import json
import os
import pstats
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import trio
import trio.lowlevel

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))

import bench_pipeline as bp

GATEWAY: Final = "gateway"
CONNECTOR: Final = "connector"
DRIVER: Final = "driver"
WARMUP: Final = 300
#: Task names are long dotted paths; these prefixes are cut for the table.
_PREFIXES: Final = ("relay_runtime.", "trio_websocket._impl.", "trio._core._run.", "trust.")


class StepCounter(trio.abc.Instrument):
    """Task steps, reschedules and channel operations per (side, task name)."""

    def __init__(
        self, roots: dict[trio.lowlevel.Task, str], profiler: cProfile.Profile | None = None
    ) -> None:
        self.roots = roots
        #: Enabled during the gateway's steps only (``--profile``), after the warm-up.
        self.profiler = profiler
        self.profiling = False
        self._side: dict[trio.lowlevel.Task, str] = {}
        self.steps: Counter[tuple[str, str]] = Counter()
        self.scheduled: Counter[str] = Counter()
        self.sends: Counter[str] = Counter()
        self.receives: Counter[str] = Counter()
        #: Thread CPU nanoseconds spent inside task steps, per side.
        self.cpu_ns: Counter[str] = Counter()
        self._step_began = 0

    def reset(self) -> None:
        """Forget every count (after the warm-up)."""
        self.steps.clear()
        self.scheduled.clear()
        self.sends.clear()
        self.receives.clear()
        self.cpu_ns.clear()

    def side(self, task: trio.lowlevel.Task) -> str:
        """The side ``task`` belongs to: the root it descends from (``other`` if none)."""
        known = self._side.get(task)
        if known is not None:
            return known
        found = "other"
        walk: trio.lowlevel.Task | None = task
        while walk is not None:
            if walk in self.roots:
                found = self.roots[walk]
                break
            nursery = walk.parent_nursery
            walk = nursery.parent_task if nursery is not None else None
        self._side[task] = found
        return found

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        side = self.side(task)
        self.steps[(side, task.name)] += 1
        if self.profiling and side == GATEWAY:
            self.profiler.enable()  # type: ignore[union-attr]
        self._step_began = time.thread_time_ns()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        ended = time.thread_time_ns()
        side = self.side(task)
        if self.profiling and side == GATEWAY:
            self.profiler.disable()  # type: ignore[union-attr]
        self.cpu_ns[side] += ended - self._step_began

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        self.scheduled[self.side(task)] += 1

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self._side.pop(task, None)


@contextlib.contextmanager
def counting_channels(counter: StepCounter) -> Iterator[None]:
    """Count memory-channel sends and receives that happened (not refused with WouldBlock),
    per calling task's side: each ``send``/``receive`` once however it completed, and each
    ``send_nowait``/``receive_nowait`` called on its own once."""
    from trio._channel import MemoryReceiveChannel, MemorySendChannel

    originals: list[tuple[type, str, Any]] = [
        (cls, name, getattr(cls, name))
        for cls, names in (
            (MemorySendChannel, ("send", "send_nowait")),
            (MemoryReceiveChannel, ("receive", "receive_nowait")),
        )
        for name in names
    ]
    inside: set[trio.lowlevel.Task] = set()

    def blocking(method: Any, tally: Counter[str]) -> Any:
        async def counted(self: Any, *args: Any) -> Any:
            task = trio.lowlevel.current_task()
            inside.add(task)
            try:
                result = await method(self, *args)
            finally:
                inside.discard(task)
            tally[counter.side(task)] += 1
            return result

        return counted

    def nowait(method: Any, tally: Counter[str]) -> Any:
        def counted(self: Any, *args: Any) -> Any:
            result = method(self, *args)  # WouldBlock and the like: not counted
            task = trio.lowlevel.current_task()
            if task not in inside:
                tally[counter.side(task)] += 1
            return result

        return counted

    for cls, name, method in originals:
        tally = counter.sends if cls is MemorySendChannel else counter.receives
        wrap = nowait if name.endswith("_nowait") else blocking
        setattr(cls, name, wrap(method, tally))
    try:
        yield
    finally:
        for cls, name, method in originals:
            setattr(cls, name, method)


async def gateway_task(
    url: str, state_dir: Path, secret: str, task_status: trio.TaskStatus[None]
) -> None:
    """The echo gateway with the trust engine, every bench user a contact (as the bench's
    gateway child, in this process)."""
    from relay_runtime import run_gateway
    from relay_runtime._cli.run import open_trust
    from relay_runtime.agents import echo
    from relay_runtime.config import GatewayConfig

    config = GatewayConfig(
        relay_url=url,
        gateway_id=bp.GATEWAY_ID,
        secret=secret,
        state_dir=state_dir,
        trust="careful",
        max_concurrent_turns=bp.SESSIONS,
        max_pending_inbound=max(1000, bp.SESSIONS),
    )
    async with open_trust(config) as engine:
        ops = getattr(engine, "ops", None)
        if ops is not None:
            for session in range(bp.SESSIONS):
                await ops.promote(bp.known_user(session), "contact", "local:bench", tier="operator")
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(run_gateway, config, echo, trust=engine))
            task_status.started()


async def one_run(count: int, profiler: cProfile.Profile | None = None) -> dict[str, Any]:
    """One fresh pipeline: warm up, count ``count`` messages; per-message figures.

    With ``profiler``, the gateway's task steps are profiled (the counted messages only).
    """
    roots: dict[trio.lowlevel.Task, str] = {trio.lowlevel.current_task(): DRIVER}
    counter = StepCounter(roots, profiler)
    secret = secrets.token_urlsafe(32)
    bench = bp.BenchConnector(secret, always_buffer=True, drain_window=bp.SATURATION_WINDOW)
    trio.lowlevel.add_instrument(counter)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-steps-") as tmp, counting_channels(counter):
            async with trio.open_nursery() as nursery:

                async def serve(task_status: trio.TaskStatus[None]) -> None:
                    roots[trio.lowlevel.current_task()] = CONNECTOR
                    await bench.connector.serve(bp.HOST, 0, task_status=task_status)  # type: ignore[arg-type]

                async def gateway(task_status: trio.TaskStatus[None]) -> None:
                    roots[trio.lowlevel.current_task()] = GATEWAY
                    await gateway_task(
                        bench.connector.base_url, Path(tmp), secret, task_status=task_status
                    )

                await nursery.start(serve)
                await nursery.start(gateway)
                with trio.fail_after(bp.START_TIMEOUT_S):
                    await bench.connector.wait_connected(bp.GATEWAY_ID)
                await bp.drive(
                    "warmup", bench.inject, bench.tracker, first_seq=1, rate=None, count=WARMUP
                )
                bench.trim()
                counter.reset()
                counter.profiling = profiler is not None
                result = await bp.drive(
                    "steps",
                    bench.inject,
                    bench.tracker,
                    first_seq=WARMUP + 1,
                    rate=None,
                    count=count,
                )
                # Let the last acks go out before the counts are read.
                await trio.sleep(0.2)
                steps = Counter(counter.steps)
                scheduled = Counter(counter.scheduled)
                sends = Counter(counter.sends)
                receives = Counter(counter.receives)
                cpu_ns = Counter(counter.cpu_ns)
                counter.profiling = False
                nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)
    done = max(1, result.completed)
    per_task: dict[str, dict[str, float]] = {}
    for (side, name), n in steps.items():
        per_task.setdefault(side, {})[short(name)] = n / done
    return {
        "completed": result.completed,
        "sent": result.sent,
        "steps": per_task,
        "scheduled": {side: n / done for side, n in scheduled.items()},
        "sends": {side: n / done for side, n in sends.items()},
        "receives": {side: n / done for side, n in receives.items()},
        "cpu_us": {side: n / 1000 / done for side, n in cpu_ns.items()},
    }


def short(name: str) -> str:
    """A task name without its package prefix."""
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def median_of(runs: list[dict[str, Any]], *path: str) -> float:
    """The median over ``runs`` of the figure at ``path`` (0 where a run lacks it)."""
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key, {}) if isinstance(value, dict) else 0.0
        values.append(float(value) if isinstance(value, int | float) else 0.0)
    return statistics.median(values)


def min_of(runs: list[dict[str, Any]], *path: str) -> float:
    """The smallest over ``runs`` of the figure at ``path``."""
    return min(median_of([run], *path) for run in runs)


def max_of(runs: list[dict[str, Any]], *path: str) -> float:
    """The largest over ``runs`` of the figure at ``path``."""
    return max(median_of([run], *path) for run in runs)


def report(runs: list[dict[str, Any]], top: int) -> str:
    """The table: per side, the busiest tasks' steps/message, the side's total, and the
    reschedules and channel operations per message (medians over runs)."""
    lines = [
        f"task steps per message, median of {len(runs)} run(s) of "
        f"{runs[0]['completed']} messages ({bp.SATURATION_WINDOW} in flight, ack-gated)"
    ]
    for side in (GATEWAY, CONNECTOR, DRIVER, "other"):
        names = sorted({name for run in runs for name in run["steps"].get(side, {})})
        if not names:
            continue
        figures = sorted(
            ((median_of(runs, "steps", side, name), name) for name in names), reverse=True
        )
        total = statistics.median(sum(run["steps"].get(side, {}).values()) for run in runs)
        lines.append(
            f"{side}: {total:.2f} steps/msg, {median_of(runs, 'scheduled', side):.2f} "
            f"reschedules, {median_of(runs, 'sends', side):.2f} channel sends, "
            f"{median_of(runs, 'receives', side):.2f} channel receives, "
            f"{median_of(runs, 'cpu_us', side):.1f} us CPU in its steps "
            f"({min_of(runs, 'cpu_us', side):.1f}-{max_of(runs, 'cpu_us', side):.1f})"
        )
        for value, name in figures[:top]:
            if value >= 0.005:
                lines.append(f"  {value:6.2f}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="messages counted per run")
    parser.add_argument("--reps", type=int, default=3, help="runs (a fresh pipeline each)")
    parser.add_argument("--top", type=int, default=12, help="tasks listed per side")
    parser.add_argument("--json", action="store_true", help="print the runs as JSON too")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="profile the gateway's steps (cProfile) and print its N busiest functions "
        "(own time) and its Python calls per message; CPU figures then include the profiler",
    )
    parser.add_argument("--profile-dump", metavar="PATH", help="write the profile (pstats) here")
    args = parser.parse_args(argv)
    profiler = cProfile.Profile() if args.profile else None
    runs = [trio.run(one_run, args.count, profiler) for _ in range(args.reps)]
    for run in runs:
        if run["completed"] != run["sent"]:
            print(f"lost {run['sent'] - run['completed']} message(s)", file=sys.stderr)
            return 1
    print(report(runs, args.top))
    if args.json:
        print(json.dumps(runs, indent=2, sort_keys=True))
    if profiler is not None:
        print(profile_report(profiler, sum(run["completed"] for run in runs), args.profile))
        if args.profile_dump:
            profiler.dump_stats(args.profile_dump)
    return 0


#: The measuring's own code, left out of the calls per message.
_MEASURING: Final = ("bench_steps.py", "_instrumentation.py")
_MEASURING_CALLS: Final = (
    "<built-in method time.thread_time_ns>",
    "<method 'disable' of '_lsprof.Profiler' objects>",
)


def profile_report(profiler: cProfile.Profile, messages: int, top: int) -> str:
    """The gateway's Python calls per message (deterministic: it does not depend on the
    machine's load) and its ``top`` functions by own time, with calls per message."""
    stats = pstats.Stats(profiler)
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    calls = sum(
        entry[1]
        for (filename, _line, name), entry in table.items()
        if not filename.endswith(_MEASURING) and name not in _MEASURING_CALLS
    )
    lines = [f"gateway: {calls / messages:.1f} function calls/msg (profiled steps)"]
    rows = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines.append("   calls/msg  own us/msg  cum us/msg  function")
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in rows:
        where = filename.replace(os.getcwd() + os.sep, "")
        lines.append(
            f"  {nc / messages:10.2f}  {tt * 1e6 / messages:10.2f}  {ct * 1e6 / messages:10.2f}"
            f"  {name} ({where}:{line})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
