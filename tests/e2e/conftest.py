"""Process-level helpers: the gateway as a real ``python -m relay_runtime run`` subprocess.

The reference connector runs in the test's own trio run on 127.0.0.1 (real loopback, no
autojump clock). Every wait is on something observed — a log line, a frame at the
connector, a file line — bounded by ``trio.fail_after``; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

HERE = Path(__file__).resolve().parent
GATEWAY_ID = "gw-e2e"
#: Generous bound for anything one process does; a hang fails instead of blocking CI.
GUARD_S = 30.0


def gateway_env(secret: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """The child's environment: credentials, state dir, fast backoff, the test agents."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_RELAY_", "RELAY_"))}
    env.update(
        {
            "GATEWAY_RELAY_ID": GATEWAY_ID,
            "GATEWAY_RELAY_SECRET": secret,
            "RELAY_STATE_DIR": str(state_dir),
            "GATEWAY_RELAY_BACKOFF_BASE_S": "0.05",
            "GATEWAY_RELAY_BACKOFF_CAP_S": "0.5",
            "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            ),
        }
    )
    env.update(extra)
    return env


@attrs.define(eq=False)
class GatewayProcess:
    """A running ``relay-runtime run`` child and the stderr lines it has written so far."""

    process: trio.Process
    lines: list[str] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)
    eof: trio.Event = attrs.field(factory=trio.Event)

    def saw(self, needle: str) -> bool:
        return any(needle in line for line in self.lines)

    async def wait_line(self, needle: str) -> str:
        """The first stderr line containing ``needle`` (waits for it)."""
        while True:
            for line in self.lines:
                if needle in line:
                    return line
            if self.eof.is_set():
                raise AssertionError(f"process ended without {needle!r}:\n" + self.text())
            await self.wait_changed()

    async def wait_changed(self) -> None:
        """Wait for the next stderr line (or the end of stderr)."""
        await self._changed.wait()

    async def wait_exit(self) -> int:
        code = await self.process.wait()
        await self.eof.wait()
        return code

    def text(self) -> str:
        return "\n".join(self.lines)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def pump(self) -> None:
        """Read the child's stderr into :attr:`lines` until it ends; run it in a nursery."""
        stream = self.process.stderr
        assert stream is not None
        buffer = b""
        try:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                self.lines.extend(part.decode("utf-8", "replace") for part in complete)
                self._wake()
        finally:
            if buffer:
                self.lines.append(buffer.decode("utf-8", "replace"))
            self.eof.set()
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def gateway_process(
    args: list[str],
    env: Mapping[str, str],
    *,
    preexec_fn: Callable[[], None] | None = None,
) -> AsyncIterator[GatewayProcess]:
    """Start ``python -m relay_runtime ARGS`` (``preexec_fn`` runs in the child before it);
    killed on the way out if still running."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay_runtime", *args],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=preexec_fn,
    )
    child = GatewayProcess(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child.pump)
            try:
                yield child
            finally:
                if process.returncode is None:
                    process.send_signal(signal.SIGKILL)
                with trio.move_on_after(GUARD_S, shield=True):
                    await process.wait()
                    await child.eof.wait()
    finally:
        if process.stderr is not None:
            await process.stderr.aclose()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


async def wait_until(predicate: Callable[[], bool], *, interval_s: float = 0.01) -> None:
    """Poll ``predicate`` (for state another process writes: a file, a database row)."""
    # Another process changes what we look at; there is no event to wait on.
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(interval_s)
