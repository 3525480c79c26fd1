"""docs/connector.md's walk-through, executed: every ``sh`` block, in order, in one bash.

A real ``relay-runtime connector`` process and a real ``relay-runtime run`` gateway, started
by the doc's own commands. The doc takes ``RELAY_PORT``, ``CONTROL_PORT`` and ``WORK`` from
the environment when they are set; this test sets them to free loopback ports and a
temporary directory. Nothing else is substituted: what runs is what the page says.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "connector.md"
#: Generous: eighteen CLI calls and two processes starting on a loaded 2-core machine.
GUARD_S = 240
_SH_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def shell_blocks(text: str) -> list[str]:
    """The bodies of the ```` ```sh ```` blocks of a Markdown text, in order."""
    return _SH_BLOCK.findall(text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_doc_has_the_steps_the_walkthrough_promises() -> None:
    script = "\n".join(shell_blocks(DOC.read_text()))
    for step in (
        "relay-runtime connector --port",
        "relay-runtime run",
        "wait connected",
        "inject",
        "journal",
        "hold",
        "buffer",
        "flush",
        "revoke",
    ):
        assert step in script, step
    assert "--secret " not in script  # no secret on a command line


@pytest.mark.timeout(GUARD_S + 30)
def test_the_connector_walkthrough_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_RELAY_", "RELAY_"))}
    env |= {"RELAY_PORT": str(free_port()), "CONTROL_PORT": str(free_port()), "WORK": str(work)}
    script = "set -euo pipefail\n" + "\n".join(shell_blocks(DOC.read_text()))
    # Its own session: if the script fails half-way, its background processes go with it.
    proc = subprocess.Popen(
        ["bash", "-c", script],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=GUARD_S)
    finally:
        if proc.poll() is None or proc.returncode != 0:
            with_logs = "\n".join(
                f"--- {p.name}\n{p.read_text()}" for p in sorted(work.glob("*.log"))
            )
            print(with_logs)
        with contextlib.suppress(ProcessLookupError):  # the doc stops both; this is a backstop
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"

    lines = out.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    # 4. Handshake.
    assert records[0] | {"connected": True, "gatewayId": "gw-mine"} == records[0]
    # 5. A live inbound, and the echo agent's reply in the journal.
    assert {"gatewayId": "gw-mine", "outcome": "live"} in records
    posts = [r for r in records if "seq" in r]
    assert [(p["seq"], p["chatId"], p["content"]) for p in posts] == [
        (1, "dm-alice", "hello gateway"),
        (2, "dm-alice", "first while held"),
        (3, "dm-alice", "second while held"),
    ]
    # 6. Buffered while held, listed, then replayed.
    buffered = [r for r in records if r.get("outcome") == "buffered"]
    listed = [r for r in records if r.get("type") == "inbound"]
    assert [r["bufferId"] for r in buffered] == [r["bufferId"] for r in listed]
    assert [r["text"] for r in listed] == ["first while held", "second while held"]
    assert any(r.get("replaying") == 2 for r in records)
    # 7. Revoked: the socket closed, the gateway refused and exited 3.
    assert any(r.get("closed") == 1 and r["revoked"] for r in records)
    assert "gateway exited with status 3" in lines
    assert records[-1] | {"connected": False, "revoked": True} == records[-1]
    # The journal file holds the same posts.
    on_disk = [json.loads(line) for line in (work / "journal.jsonl").read_text().splitlines()]
    assert on_disk == posts
    # The gateway saw the 4401 and said why it stopped.
    assert "relay disabled" in (work / "gateway.log").read_text()


@pytest.mark.parametrize(
    ("text", "blocks"),
    [
        ("```sh\na\n```\n```text\nb\n```\n```sh\nc\nd\n```\n", ["a\n", "c\nd\n"]),
        ("```python\nx\n```\n", []),
    ],
)
def test_shell_blocks_are_found_in_order(text: str, blocks: list[str]) -> None:
    assert shell_blocks(text) == blocks
