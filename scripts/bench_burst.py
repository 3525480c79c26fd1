"""Burst benchmark: 10,000 messages sent at once, against steady saturation (issue 11).

Real processes, as ``bench_pipeline.py``: this process runs the reference connector, a child
runs the gateway (echo agent, trust engine, ``max_pending_inbound`` 1,000). In one run:

1. **steady** — saturation with 128 messages in flight: the completion rate the burst is
   compared with;
2. **burst** — ``--count`` (10,000) messages injected at once, as fast as the socket takes
   them; the figure is the time until every one was answered and its rate (count / time).

Reported: burst completion time, burst rate / steady rate (target >= 0.80), outbound
timeouts in the gateway's log (target 0), answers missing or duplicated, and the gateway's
RSS before the burst, at its peak and after.

    python scripts/bench_burst.py [--count 10000] [--steady 3000] [--trust careful] [--json]

Exit status 1 when a target is missed or a message was not answered exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))

import bench_pipeline as bp

TARGET_RATIO: Final = 0.80
BURST_TIMEOUT_S: Final = 300.0
RSS_POLL_S: Final = 0.05
TIMED_OUT: Final = "timed out after"


def rss_kib(pid: int) -> int:
    """The resident set size of ``pid`` in KiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@attrs.frozen
class BurstResult:
    """The figures of one burst run."""

    count: int
    steady_rate: float
    burst_seconds: float
    answered: int
    duplicates: int
    timeouts: int
    rss_before_kib: int
    rss_peak_kib: int
    rss_after_kib: int

    @property
    def burst_rate(self) -> float:
        return self.answered / self.burst_seconds if self.burst_seconds > 0 else 0.0

    @property
    def ratio(self) -> float:
        return self.burst_rate / self.steady_rate if self.steady_rate else 0.0

    @property
    def ok(self) -> bool:
        return (
            self.ratio >= TARGET_RATIO
            and self.timeouts == 0
            and self.answered == self.count
            and self.duplicates == 0
        )

    def lines(self) -> list[str]:
        return [
            f"steady saturation: {self.steady_rate:,.0f} msg/s",
            f"burst of {self.count:,}: all answered in {self.burst_seconds:.2f} s = "
            f"{self.burst_rate:,.0f} msg/s, {self.ratio:.2f} of steady "
            f"(target >= {TARGET_RATIO:.2f})",
            f"answered {self.answered:,} of {self.count:,}, {self.duplicates} duplicate(s); "
            f"outbound timeouts: {self.timeouts} (target 0)",
            f"gateway RSS: {self.rss_before_kib:,} KiB before, peak {self.rss_peak_kib:,} KiB "
            f"(+{self.rss_peak_kib - self.rss_before_kib:,}), "
            f"{self.rss_after_kib:,} KiB after",
        ]


async def burst(count: int, steady: int, trust: str) -> BurstResult:
    """Steady saturation, then the burst, over one gateway child."""
    async with bp.pipeline(trust) as (bench, proc):
        seq = 1
        await bp.drive("warmup", bench.inject, bench.tracker, first_seq=seq, rate=None, count=300)
        seq += 300
        steady_run = await bp.drive(
            "steady", bench.inject, bench.tracker, first_seq=seq, rate=None, count=steady
        )
        bp.progress(steady_run)
        seq += steady_run.sent
        bench.trim()

        answers: Counter[int] = Counter()
        first_seq = seq
        done = trio.Event()

        def seen(conn: Any, frame: Any) -> None:
            content = getattr(frame.action, "content", None)
            number = bp.parse_seq(content) if isinstance(content, str) else None
            if number is not None and number >= first_seq:
                answers[number] += 1
                if len(answers) >= count:
                    done.set()

        bench.connector.on_outbound = seen
        before = rss_kib(proc.pid)
        peak = before
        async with trio.open_nursery() as nursery:

            async def watch_rss() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, rss_kib(proc.pid))
                    await trio.sleep(RSS_POLL_S)

            nursery.start_soon(watch_rss)
            start = time.perf_counter()
            for i in range(count):
                await bench.inject(first_seq + i)
            with trio.move_on_after(BURST_TIMEOUT_S):
                await done.wait()
            elapsed = time.perf_counter() - start
            await trio.sleep(1.0)  # late duplicates, if any, would show here
            nursery.cancel_scope.cancel()
        after = rss_kib(proc.pid)
        log = Path(proc.args[proc.args.index("--state-dir") + 1]) / "gateway-stderr.log"
        timeouts = sum(TIMED_OUT in line for line in log.read_text(errors="replace").splitlines())
        return BurstResult(
            count=count,
            steady_rate=steady_run.throughput,
            burst_seconds=elapsed,
            answered=len(answers),
            duplicates=sum(n - 1 for n in answers.values()),
            timeouts=timeouts,
            rss_before_kib=before,
            rss_peak_kib=peak,
            rss_after_kib=after,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the burst benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="messages in the burst")
    parser.add_argument("--steady", type=int, default=3000, help="messages in the steady run")
    parser.add_argument("--trust", default="careful", help="gateway trust preset (or open)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    result = trio.run(burst, args.count, args.steady, args.trust)
    for line in result.lines():
        print(line)
    if args.json:
        print(json.dumps({**attrs.asdict(result), "burst_rate": result.burst_rate}))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
