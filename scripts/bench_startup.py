"""Startup cost of the launcher: ``relay-runtime run`` to READY, and import time.

Runs the reference connector in this process on 127.0.0.1, then starts
``python -m relay_runtime run`` ``--runs`` times (default 10) against it, measuring from
process start to the ``gateway ready`` log line, and stops each with SIGTERM (drain). Then
measures the import time of ``relay_runtime`` and of the ``run`` command's modules with
``python -X importtime`` (the "self" column summed over every imported module).

Target: median time to READY <= 0.35 s (issue 15). Usage::

    python scripts/bench_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from relay_runtime.connector import ReferenceConnector

TARGET_S = 0.35  # issue 15 (was 0.5)
GATEWAY_ID = "gw-bench"
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s+(.*)$")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (``/proc/<pid>/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def time_to_ready(url: str, secret: str, state_dir: Path) -> tuple[float, float]:
    """Seconds from spawning ``run`` to its ``gateway ready`` line, and the CPU seconds the
    process had used by then (a figure a busy machine moves much less); then SIGTERM."""
    env = dict(os.environ)
    env.update(
        GATEWAY_RELAY_ID=GATEWAY_ID,
        GATEWAY_RELAY_SECRET=secret,
        RELAY_STATE_DIR=str(state_dir),
    )
    started = time.perf_counter()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay_runtime", "run", "--relay-url", url, "--trust", "open"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    elapsed: float | None = None
    cpu = 0.0
    buffer = b""
    try:
        with trio.fail_after(30):
            while elapsed is None:
                chunk = await process.stderr.receive_some(65536)
                if not chunk:
                    raise RuntimeError("gateway exited before READY:\n" + buffer.decode())
                buffer += chunk
                if b"gateway ready" in buffer:
                    elapsed = time.perf_counter() - started
                    cpu = cpu_seconds(process.pid)
            process.send_signal(signal.SIGTERM)
            while await process.stderr.receive_some(65536):
                pass
            code = await process.wait()
        if code != 0:
            raise RuntimeError(f"gateway exited {code} after SIGTERM:\n{buffer.decode()}")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
    return elapsed, cpu


async def bench_ready(runs: int) -> list[tuple[float, float]]:
    """``runs`` times (wall, CPU) from process start to READY, one gateway after another."""
    secret = secrets.token_urlsafe(32)
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    times: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as state:
        async with trio.open_nursery() as nursery:
            await nursery.start(connector.serve, "127.0.0.1", 0)
            for _ in range(runs):
                sample = await time_to_ready(connector.base_url, secret, Path(state))
                times.append(sample)
            nursery.cancel_scope.cancel()
    return times


def import_time(statement: str) -> tuple[float, int]:
    """Summed self import time (seconds) and module count of ``statement`` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
    )
    total_us = 0
    count = 0
    for line in proc.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            total_us += int(match.group(1))
            count += 1
    return total_us / 1e6, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="processes to start (default 10)")
    args = parser.parse_args()

    samples = trio.run(bench_ready, args.runs)
    times = [wall for wall, _ in samples]
    cpu = [c for _, c in samples]
    median = statistics.median(times)
    print(f"run -> READY over {len(times)} runs (process start to 'gateway ready'):")
    print(f"  median {median * 1000:.0f} ms, min {min(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms; target <= {TARGET_S * 1000:.0f} ms: "
          f"{'met' if median <= TARGET_S else 'NOT met'}")  # fmt: skip
    print(f"  CPU used by READY: median {statistics.median(cpu) * 1000:.0f} ms, "
          f"min {min(cpu) * 1000:.0f} ms, max {max(cpu) * 1000:.0f} ms")  # fmt: skip
    for label, statement in (
        ("import relay_runtime", "import relay_runtime"),
        ("import the run command", "import relay_runtime._cli, relay_runtime._cli.run"),
        ("import the whole CLI", "import relay_runtime._cli as c; c.build_parser()"),
    ):
        seconds, modules = import_time(statement)
        print(f"  {label}: {seconds * 1000:.0f} ms summed self time over {modules} modules")
    return 0 if median <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
