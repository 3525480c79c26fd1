"""Startup cost of the launcher: ``relay-runtime run`` to READY, and import time.

Runs the reference connector in this process on 127.0.0.1, then starts
``python -m relay_runtime run`` ``--runs`` times (default 10) against it, measuring from
process start to the ``gateway ready`` log line, and stops each with SIGTERM (drain). Then
measures the import time of ``relay_runtime`` and of the ``run`` command's modules with
``python -X importtime`` (the "self" column summed over every imported module).

Both with the bytecode cache an installed gateway has (pip compiles every module at install
time; a source tree writes ``__pycache__`` on its first run) and without one (every project
module compiled at each start, as when ``PYTHONDONTWRITEBYTECODE`` is set and the tree has
no ``__pycache__``). The cached runs use a private ``PYTHONPYCACHEPREFIX`` filled by one
untimed start, so the tree stays clean. Target: median time to READY <= 0.35 s with the
bytecode cached (issue 15); the exit status says whether it is met. Usage::

    python scripts/bench_startup.py [--runs N] [--bytecode cached|none|both]
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


def bytecode_env(cache_dir: Path | None) -> dict[str, str]:
    """This process's environment for a child that reads and writes its bytecode cache in
    ``cache_dir``, or (``None``) one that writes none (project modules are compiled then,
    unless the tree has ``__pycache__`` from elsewhere)."""
    env = dict(os.environ)
    if cache_dir is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache_dir)
    return env


async def time_to_ready(
    url: str, secret: str, state_dir: Path, base_env: dict[str, str]
) -> tuple[float, float]:
    """Seconds from spawning ``run`` to its ``gateway ready`` line, and the CPU seconds the
    process had used by then (a figure a busy machine moves much less); then SIGTERM."""
    env = dict(base_env)
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


async def bench_ready(runs: int, env: dict[str, str], warm_up: bool) -> list[tuple[float, float]]:
    """``runs`` times (wall, CPU) from process start to READY, one gateway after another
    (after one untimed start when ``warm_up``, which fills a bytecode cache)."""
    secret = secrets.token_urlsafe(32)
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    times: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as state:
        async with trio.open_nursery() as nursery:
            await nursery.start(connector.serve, "127.0.0.1", 0)
            if warm_up:
                await time_to_ready(connector.base_url, secret, Path(state), env)
            for _ in range(runs):
                sample = await time_to_ready(connector.base_url, secret, Path(state), env)
                times.append(sample)
            nursery.cancel_scope.cancel()
    return times


def import_time(statement: str, env: dict[str, str]) -> tuple[float, int]:
    """Summed self import time (seconds) and module count of ``statement`` in a fresh process."""
    subprocess.run([sys.executable, "-c", statement], env=env, check=True)  # fills a cache
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        env=env,
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


def report(label: str, runs: int, env: dict[str, str], warm_up: bool) -> float:
    """Time ``runs`` starts in ``env`` and print them under ``label``; the median (s)."""
    samples = trio.run(bench_ready, runs, env, warm_up)
    times = [wall for wall, _ in samples]
    cpu = [c for _, c in samples]
    median = statistics.median(times)
    print(f"run -> READY, {label}, over {len(times)} runs (process start to 'gateway ready'):")
    print(f"  median {median * 1000:.0f} ms, min {min(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms")  # fmt: skip
    print(f"  CPU used by READY: median {statistics.median(cpu) * 1000:.0f} ms, "
          f"min {min(cpu) * 1000:.0f} ms, max {max(cpu) * 1000:.0f} ms")  # fmt: skip
    for what, statement in (
        ("import relay_runtime", "import relay_runtime"),
        ("import the run command", "import relay_runtime._cli, relay_runtime._cli.run"),
        ("import the whole CLI", "import relay_runtime._cli as c; c.build_parser()"),
    ):
        seconds, modules = import_time(statement, env)
        print(f"  {what}: {seconds * 1000:.0f} ms summed self time over {modules} modules")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="processes to start (default 10)")
    parser.add_argument(
        "--bytecode",
        choices=("cached", "none", "both"),
        default="both",
        help="start with the bytecode cached (as installed), without, or both (default)",
    )
    args = parser.parse_args()

    met = True
    with tempfile.TemporaryDirectory(prefix="relay-pycache-") as cache:
        if args.bytecode in ("cached", "both"):
            median = report("bytecode cached", args.runs, bytecode_env(Path(cache)), True)
            met = median <= TARGET_S
            print(f"  target <= {TARGET_S * 1000:.0f} ms (bytecode cached): "
                  f"{'met' if met else 'NOT met'}")  # fmt: skip
        if args.bytecode in ("none", "both"):
            report("no bytecode cache (every project module compiled)", args.runs,
                   bytecode_env(None), False)  # fmt: skip
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
