"""Soak: steady load on a gateway for N minutes, watching its memory and file descriptors.

The pipeline of ``bench_pipeline.py`` (reference connector here, echo gateway with the
careful trust engine in a child process, loopback) is driven open loop at ``--rate`` msg/s.
Once a minute the gateway process's RSS (``/proc/<pid>/status`` VmRSS) and open file
descriptors (``/proc/<pid>/fd``) are sampled. The first sample after ``--warmup`` minutes is
the baseline; the run fails (exit 1) if the last sample of either has grown more than 5 %
over it, or if any message was lost.

    python scripts/soak.py --minutes 30 [--rate 100] [--warmup 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))

from bench_pipeline import drive, pipeline

GROWTH_LIMIT = 0.05


@attrs.frozen
class Sample:
    """One minute's reading of the gateway process."""

    minute: int
    rss_kb: int
    fds: int
    sent: int
    lost: int
    p99_ms: float


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    """How many file descriptors ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def growth(base: int, last: int) -> float:
    """Relative growth from ``base`` to ``last``."""
    return (last - base) / base if base else 0.0


async def soak(minutes: int, rate: float, warmup: int) -> list[Sample]:
    """Run the load, one drive per minute, and return the per-minute samples."""
    samples: list[Sample] = []
    async with pipeline("careful") as (bench, proc):
        seq = 1
        per_minute = int(rate * 60)
        for minute in range(1, minutes + 1):
            result = await drive(
                "soak", bench.inject, bench.tracker, first_seq=seq, rate=rate, count=per_minute
            )
            seq += per_minute
            bench.trim()
            sample = Sample(
                minute,
                rss_kb(proc.pid),
                open_fds(proc.pid),
                result.sent,
                result.lost,
                round(result.pct(0.99), 2),
            )
            samples.append(sample)
            mark = "" if minute > warmup else " (warm-up)"
            print(
                f"{time.strftime('%H:%M:%S')} minute {minute}: rss {sample.rss_kb} KiB, "
                f"fds {sample.fds}, {sample.sent} sent, {sample.lost} lost, "
                f"p99 {sample.p99_ms} ms{mark}",
                flush=True,
            )
    return samples


def verdict(samples: Sequence[Sample], warmup: int) -> tuple[bool, list[str]]:
    """Whether RSS and fds stayed within 5 % of the post-warm-up baseline, nothing lost."""
    steady = [s for s in samples if s.minute > warmup]
    if len(steady) < 2:
        return False, [f"too short: {len(steady)} sample(s) after a {warmup}-minute warm-up"]
    base, last = steady[0], steady[-1]
    rss_growth = growth(base.rss_kb, last.rss_kb)
    fd_growth = growth(base.fds, last.fds)
    lost = sum(s.lost for s in samples)
    lines = [
        f"rss {base.rss_kb} -> {last.rss_kb} KiB ({rss_growth:+.1%}, limit +{GROWTH_LIMIT:.0%})",
        f"fds {base.fds} -> {last.fds} ({fd_growth:+.1%}, limit +{GROWTH_LIMIT:.0%})",
        f"messages: {sum(s.sent for s in samples)} sent, {lost} lost",
    ]
    ok = rss_growth <= GROWTH_LIMIT and fd_growth <= GROWTH_LIMIT and not lost
    return ok, lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; exit 1 on growth or loss."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--rate", type=float, default=100.0, help="offered msg/s")
    parser.add_argument("--warmup", type=int, default=2, help="minutes before the baseline")
    args = parser.parse_args(argv)
    if args.minutes < args.warmup + 2:
        parser.error("--minutes must be at least --warmup + 2")
    samples = trio.run(soak, args.minutes, args.rate, args.warmup)
    ok, lines = verdict(samples, args.warmup)
    for line in lines:
        print(line)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
