"""Real ``python -m relay_runtime`` processes: stop signals at every moment of start-up,
repeated signals, credentials the connector refuses, Ctrl-C in the demo (issues 11, 16).

Every wait is on something observed — the kernel's record that the launcher's handler is
installed (``SigCgt`` in ``/proc/PID/status``), a log line, a prompt — never a sleep.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from relay_runtime.connector import ReferenceConnector
from tests.e2e.conftest import (
    GATEWAY_ID,
    GUARD_S,
    GatewayProcess,
    gateway_env,
    gateway_process,
    new_secret,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
READY = "gateway ready"
STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT]


def run_args(url: str, *extra: str) -> list[str]:
    return ["run", "--relay-url", url, "--trust", "open", *extra]


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (``SigCgt``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except FileNotFoundError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


async def launcher_owns_signals(gw: GatewayProcess) -> None:
    """Wait until the launcher's first instruction has run (SIGTERM is caught)."""
    # Python catches SIGINT by itself at start; SIGTERM only once the launcher took over.
    await wait_until(lambda: catches(gw.process.pid, signal.SIGTERM), interval_s=0.001)


def assert_clean(gw: GatewayProcess, code: int) -> None:
    assert code == 0, gw.text()
    assert "Traceback" not in gw.text()
    assert "KeyboardInterrupt" not in gw.text()


async def unused_port() -> int:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# ---- stop signals during start-up ----------------------------------------------------------


@pytest.mark.parametrize("signum", STOP_SIGNALS)
@pytest.mark.parametrize("moment", ["handler installed", "first log line", "dialing"])
async def test_a_stop_signal_at_any_moment_of_start_up_exits_0(
    tmp_path: Path, signum: signal.Signals, moment: str
) -> None:
    port = await unused_port()  # nothing listens: the gateway never gets ready
    env = gateway_env(new_secret(), tmp_path / "state")
    with trio.fail_after(GUARD_S):
        async with gateway_process(run_args(f"ws://127.0.0.1:{port}"), env) as gw:
            await launcher_owns_signals(gw)
            if moment == "first log line":
                await gw.wait_line("starting gateway")
            elif moment == "dialing":
                await gw.wait_line("dial failed")
            gw.signal(signum)
            with trio.fail_after(10):
                code = await gw.wait_exit()
    assert_clean(gw, code)
    assert not gw.saw(READY)


@pytest.mark.parametrize("moment", ["handler installed", "first log line", "ready"])
async def test_three_quick_sigterms_exit_0(tmp_path: Path, moment: str) -> None:
    secret = new_secret()
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = gateway_env(secret, tmp_path / "state")
        with trio.fail_after(GUARD_S):
            async with gateway_process(run_args(connector.base_url), env) as gw:
                await launcher_owns_signals(gw)
                if moment == "first log line":
                    await gw.wait_line("starting gateway")
                elif moment == "ready":
                    await gw.wait_line(READY)
                for _ in range(3):
                    gw.signal(signal.SIGTERM)
                with trio.fail_after(10):
                    code = await gw.wait_exit()
        nursery.cancel_scope.cancel()
    assert_clean(gw, code)


async def test_a_second_signal_that_cuts_the_drain_is_logged_as_such(tmp_path: Path) -> None:
    secret = new_secret()
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    connector.ack_going_idle = False  # the drain waits for an ack that never comes
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = gateway_env(secret, tmp_path / "state")
        with trio.fail_after(GUARD_S):
            async with gateway_process(run_args(connector.base_url), env) as gw:
                await gw.wait_line(READY)
                gw.signal(signal.SIGTERM)
                await gw.wait_line("draining through going_idle")
                await connector.wait_for(lambda: len(connector.going_idles) == 1)
                gw.signal(signal.SIGINT)
                with trio.fail_after(10):
                    code = await gw.wait_exit()
        nursery.cancel_scope.cancel()
    assert_clean(gw, code)
    assert gw.saw("drain cut short by a second SIGINT; stopping now")
    assert not gw.saw("did not finish")


# ---- credentials the connector refuses -----------------------------------------------------


@pytest.mark.parametrize("reject_mode", ["http", "close"])
async def test_refused_credentials_are_called_out_naming_the_gateway(
    tmp_path: Path, reject_mode: str
) -> None:
    connector = ReferenceConnector(secrets={GATEWAY_ID: new_secret()}, reject_mode=reject_mode)
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = gateway_env(new_secret(), tmp_path / "state")  # not the connector's secret
        with trio.fail_after(GUARD_S):
            async with gateway_process(run_args(connector.base_url), env) as gw:
                line = await gw.wait_line("refuses these credentials")
                # Repeated with back-off: after twice as many refusals.
                await gw.wait_line("3 dials in a row refused")
                await gw.wait_line("6 dials in a row refused")
                gw.signal(signal.SIGTERM)
                with trio.fail_after(10):
                    code = await gw.wait_exit()
        nursery.cancel_scope.cancel()
    assert_clean(gw, code)
    assert "level=ERROR" in line
    assert f"gateway id {GATEWAY_ID}" in line
    for hint in ("relay-runtime enroll", "relay-runtime provision", "GATEWAY_RELAY_SECRET"):
        assert hint in line
    assert len([x for x in gw.lines if "refuses these credentials" in x]) == 2


async def test_exit_on_refused_exits_3_with_one_line(tmp_path: Path) -> None:
    connector = ReferenceConnector(secrets={GATEWAY_ID: new_secret()}, reject_mode="close")
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = gateway_env(new_secret(), tmp_path / "state")
        args = run_args(connector.base_url, "--exit-on-refused")
        with trio.fail_after(GUARD_S):
            async with gateway_process(args, env) as gw:
                code = await gw.wait_exit()
        nursery.cancel_scope.cancel()
    assert code == 3, gw.text()
    assert "Traceback" not in gw.text()
    (last,) = [x for x in gw.lines if x.startswith("relay-runtime: error: ")]
    assert "the connector refuses these credentials" in last
    assert len(connector.rejections) == 3  # the third refusal ended it


async def test_exit_on_refused_from_the_environment(tmp_path: Path) -> None:
    connector = ReferenceConnector(secrets={GATEWAY_ID: new_secret()})
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = gateway_env(new_secret(), tmp_path / "state", GATEWAY_RELAY_EXIT_ON_REFUSED="1")
        with trio.fail_after(GUARD_S):
            async with gateway_process(run_args(connector.base_url), env) as gw:
                code = await gw.wait_exit()
        nursery.cancel_scope.cancel()
    assert code == 3, gw.text()


# ---- Ctrl-C in the demo --------------------------------------------------------------------


async def read_until(stream: trio.abc.ReceiveStream, needle: bytes, seen: bytearray) -> None:
    while needle not in seen:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise AssertionError(f"end of output without {needle!r}: {bytes(seen)!r}")
        seen += chunk


@pytest.mark.parametrize("moment", ["at the prompt", "starting"])
async def test_ctrl_c_in_the_demo_quits_at_once_with_exit_0(moment: str) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay_runtime", "demo"],
        cwd=ROOT,
        stdin=subprocess.PIPE,  # a console that never types anything
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    out = bytearray()
    try:
        with trio.fail_after(GUARD_S):
            if moment == "at the prompt":
                await read_until(process.stdout, b"demo:alice> ", out)
            else:
                await wait_until(lambda: catches(process.pid, signal.SIGTERM), interval_s=0.001)
            process.send_signal(signal.SIGINT)
            with trio.fail_after(5):  # at once: no Enter needed, no drain of a live chat
                code = await process.wait()
            out += await read_all(process.stdout)
            err = await read_all(process.stderr)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()
    assert code == 0, (bytes(out), err)
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err
    if moment == "at the prompt":
        assert out.rstrip().endswith(b"bye"), bytes(out)


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data)
