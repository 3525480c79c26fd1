"""``relay-runtime connector`` as a separate process, and its argument handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import attrs
import pytest
import trio
from trio_websocket import ConnectionClosed

from protocol import DescriptorFrame, Inbound, Outbound, OutboundResult, Send
from relay_runtime._cli.connector import parse_credentials

from .peer import SECRET, Peer, dial, good_headers

LIMIT = 20


def test_credentials_pair_up_in_command_line_order():
    items = [
        ("gateway_id", "gw-a"),
        ("secret", "s1"),
        ("secret", "s2"),
        ("gateway_id", "gw-b"),
        ("secret", "s3"),
    ]
    assert parse_credentials(items, {}) == {"gw-a": ["s1", "s2"], "gw-b": ["s3"]}


def test_credentials_fall_back_to_the_gateway_environment():
    env = {"GATEWAY_RELAY_ID": "gw-env", "GATEWAY_RELAY_SECRET": "s"}
    assert parse_credentials(None, env) == {"gw-env": ["s"]}
    assert parse_credentials(None, {}) == {}


@pytest.mark.parametrize(
    ("items", "env", "problem"),
    [
        ([("secret", "s")], {}, "--secret must follow a --gateway-id"),
        ([("gateway_id", "gw")], {}, "'gw' has no --secret"),
        (None, {"GATEWAY_RELAY_SECRET": "s"}, "GATEWAY_RELAY_SECRET is set without"),
    ],
)
def test_bad_credentials_are_named(items, env, problem):
    with pytest.raises(ValueError, match=problem):
        parse_credentials(items, env)


def test_no_credentials_is_a_usage_error():
    done = subprocess.run(
        [sys.executable, "-m", "relay_runtime", "connector"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=LIMIT,
        check=False,
    )
    assert done.returncode == 2
    assert "no gateway credentials" in done.stderr


async def _read_line(stdout: trio.abc.ReceiveStream) -> str:
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stdout.receive_some(1)
        assert chunk, "connector exited before printing its URLs"
        line += chunk
    return line.decode().strip()


async def _start(*extra: str) -> tuple[trio.Process, trio.abc.ReceiveStream, str]:
    """A connector process for gateway ``gw-test``; returns it, its stdout and the ws URL."""
    env = {**os.environ, "TEST_GATEWAY_SECRET": SECRET}
    command = [
        sys.executable,
        "-m",
        "relay_runtime",
        "--log-level",
        "warning",
        "connector",
        "--gateway-id",
        "gw-test",
        "--secret-env",
        "TEST_GATEWAY_SECRET",
        *extra,
    ]
    proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    url = await _read_line(proc.stdout)
    control = await _read_line(proc.stdout)
    assert control.startswith("http://127.0.0.1:")
    return proc, proc.stdout, url


async def test_standalone_connector_prints_its_url_serves_and_stops_on_sigterm():
    with trio.fail_after(LIMIT):
        proc, _, url = await _start("--platform", "telegram")
        try:
            assert url.startswith("ws://127.0.0.1:")
            assert url.endswith("/relay")
            async with dial(url, good_headers()) as peer:
                await peer.hello("telegram")
                frame = await peer.expect(DescriptorFrame)
            assert frame.descriptor.len_unit == "utf16"
        finally:
            proc.send_signal(signal.SIGTERM)
            status = await proc.wait()
    assert status == 0


async def test_bench_mode_times_round_trips_to_the_gateway_send():
    with trio.fail_after(LIMIT):
        proc, stdout, url = await _start("--bench", "5", "--rate", "500", "--bench-timeout", "15")
        try:
            async with dial(url, good_headers()) as peer:
                await peer.hello("relay")
                await peer.expect(DescriptorFrame)
                asked = results = 0
                while asked < 5:  # inbound and results interleave at 500/s
                    frame = await peer.next()
                    results += isinstance(frame, OutboundResult)
                    if isinstance(frame, Inbound):
                        action = Send(chat_id=frame.event.source.chat_id, content="pong")
                        await peer.send(Outbound(request_id=f"{asked:032x}", action=action))
                        asked += 1
                # The run waits for the connector's result to every send, then closes 1001.
                closed = await _count_results_until_closed(peer)
                results += closed.count
                output = b""
                while not output.endswith(b"\n"):
                    chunk = await stdout.receive_some(4096)
                    assert chunk, "connector exited before printing the summary"
                    output += chunk
        finally:
            status = await proc.wait()
    summary = json.loads(output)
    assert results == 5
    assert (closed.code, closed.reason) == (1001, "bench done")
    assert status == 0
    assert summary["count"] == summary["answered"] == 5
    assert 0 <= summary["p50_ms"] <= summary["max_ms"]


@attrs.frozen
class _Closed:
    count: int
    code: int | None
    reason: str | None


async def _count_results_until_closed(peer: Peer) -> _Closed:
    """Read frames until the connector closes the socket; count the outbound results."""
    count = 0
    try:
        while True:
            count += isinstance(await peer.next(), OutboundResult)
    except ConnectionClosed as exc:
        reason = exc.reason
    return _Closed(count, reason.code if reason else None, reason.reason if reason else None)
