"""docs/embedding.md runs as written: every code block, as a real process (issue 16).

Each ```python block is saved to a file and run with ``python`` in an empty directory, with
the environment the doc says it needs pointing at a real reference connector on 127.0.0.1.
A block that ends by itself must exit 0; one that runs until stopped must log that it is
ready, answer a message through the connector, and exit 0 on SIGINT or SIGTERM — never a
traceback.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from protocol import MessageEvent, SessionSource
from relay_runtime.connector import ReferenceConnector
from tests.e2e.conftest import GATEWAY_ID, GUARD_S, GatewayProcess, new_secret

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "embedding.md"


def code_blocks() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    fences = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    assert all(lang == "python" for lang, _ in fences), "a non-Python block: teach this test"
    return [body for _, body in fences]


BLOCKS = code_blocks()


def doc_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_RELAY_", "RELAY_"))}
    env["RELAY_STATE_DIR"] = str(tmp_path / "state")
    env["GATEWAY_RELAY_BACKOFF_BASE_S"] = "0.05"  # quick re-dials; not needed by the doc
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(settings)
    return env


async def start(block: str, tmp_path: Path, env: dict[str, str]) -> GatewayProcess:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    (workdir / "bot.py").write_text(block, encoding="utf-8")
    process = await trio.lowlevel.open_process(
        [sys.executable, "bot.py"],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return GatewayProcess(process)


async def ready_or_exit(gw: GatewayProcess) -> bool:
    """Wait until the block logs that it is ready (True) or ends by itself (False)."""
    while not gw.eof.is_set():
        if gw.saw("ready: ready"):
            return True
        await gw.wait_changed()
    return False


@pytest.mark.parametrize("index", range(len(BLOCKS)))
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_every_block_runs_as_written(
    tmp_path: Path, index: int, signum: signal.Signals
) -> None:
    secret = new_secret()
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = doc_env(
            tmp_path,
            GATEWAY_RELAY_URL=connector.base_url,
            GATEWAY_RELAY_ID=GATEWAY_ID,
            GATEWAY_RELAY_SECRET=secret,
            RELAY_TRUST="open",  # the doc's advice for a first try: careful denies strangers
        )
        gw = await start(BLOCKS[index], tmp_path, env)
        try:
            with trio.fail_after(GUARD_S):
                nursery.start_soon(gw.pump)
                runs_until_stopped = await ready_or_exit(gw)
                if runs_until_stopped:
                    source = SessionSource(platform="relay", chat_id="c1", user_id="42")
                    await connector.inject(
                        MessageEvent(text="hi", source=source, message_id="m1"),
                        gateway_id=GATEWAY_ID,
                    )
                    await connector.wait_for(lambda: len(connector.messages) == 1)
                    assert [m.content for m in connector.messages.values()] == ["echo: hi"]
                    gw.signal(signum)
                code = await gw.wait_exit()
        finally:
            if gw.process.returncode is None:
                gw.process.kill()
            await gw.process.wait()
            if gw.process.stderr is not None:
                await gw.process.stderr.aclose()
        nursery.cancel_scope.cancel()
    assert code == 0, gw.text()
    assert "Traceback" not in gw.text()
    if runs_until_stopped:
        assert len(connector.going_idles) == 1  # stopping drained through going_idle
        assert gw.saw(f"{signum.name}: going idle, then stopping")


async def test_the_example_without_its_environment_says_what_is_missing(tmp_path: Path) -> None:
    (main,) = [block for block in BLOCKS if "from_env()" in block]
    gw = await start(main, tmp_path, doc_env(tmp_path))
    try:
        with trio.fail_after(GUARD_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(gw.pump)
                code = await gw.wait_exit()
    finally:
        if gw.process.stderr is not None:
            await gw.process.stderr.aclose()
    assert code == 1
    assert gw.lines == [
        "bot: configuration error: relay_url: is not set; the gateway has no connector to dial"
    ]
