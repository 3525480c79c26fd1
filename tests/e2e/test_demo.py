"""``python -m relay_runtime demo --script docs/demo.script`` in a subprocess: the transcript."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "demo.script"


def run_demo(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay_runtime", "demo", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def blocks(transcript: str) -> dict[str, list[str]]:
    """Each typed line (``user> text``) with the indented lines that answer it."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in transcript.splitlines():
        if "> " in line and not line.startswith(" "):
            current = out.setdefault(line, [])
        elif current is not None and line.startswith("  "):
            current.append(line.strip())
    return out


def test_scripted_demo_prints_trust_decisions_and_replies() -> None:
    proc = run_demo("--script", str(SCRIPT))
    assert proc.returncode == 0, proc.stderr
    said = blocks(proc.stdout)
    assert said["demo:alice> hello from the admin"] == [
        "trust: allow - admin (tier rule)",
        "reply: hello from the admin",
    ]
    assert said["demo:bob> hi, I am whitelisted"] == [
        "trust: allow - whitelisted (tier rule)",
        "reply: hi, I am whitelisted",
    ]
    assert said["demo:carol> hello? can anyone hear me?"] == [
        "trust: deny - stranger denied by careful (tier rule)",
        "(no reply)",
    ]
    assert said["demo:carol> /invite WRONG-CODE-1234"] == [
        "trust: deny - invite rejected: unknown (tier rule)",
        "reply: That invite code was not accepted.",
    ]
    assert said["demo:carol> /invite $INVITE"] == [
        "trust: allow - invite accepted (tier rule)",
        "reply: Invite accepted. You are now a contact.",
    ]
    assert said["demo:carol> now I am a contact"][-1] == "reply: now I am a contact"
    assert said["demo:carol> /drop"][-2:] == [
        "the gateway saw the socket end (close 1006) and re-dialed",
        "connection recovered: handshake #2 (was #1), state ready",
    ]
    assert said["demo:carol> still there after the drop?"][-1] == (
        "reply: still there after the drop?"
    )
    idle = said["demo:carol> /idle sent while the gateway sleeps"]
    assert idle[0].startswith("going_idle sent; the connector acked")
    assert "'sent while the gateway sleeps' -> buffered at the connector" in idle[2]
    assert idle[3].startswith("gateway re-dialed (handshake #3, was #2)")
    assert idle[4:6] == [
        "trust: allow - contact (tier rule)",
        "reply: sent while the gateway sleeps",
    ]
    assert idle[-1] == "buffer drained; the connector is back to live delivery"
    assert said["demo:alice> /trust level demo:carol"][-1] == "reply: demo:carol: contact"
    assert proc.stdout.rstrip().endswith("bye")


def test_scripted_transcript_is_deterministic() -> None:
    first = run_demo("--script", str(SCRIPT))
    second = run_demo("--script", str(SCRIPT))
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout


def test_console_reads_stdin_lines_until_end_of_input() -> None:
    proc = run_demo("--as", "bob", stdin="hello there\n/as carol\nhi\n")
    assert proc.returncode == 0, proc.stderr
    assert "reply: hello there" in proc.stdout
    assert "trust: deny - stranger denied by careful (tier rule)" in proc.stdout
    assert proc.stdout.rstrip().endswith("bye")


def test_missing_script_is_a_usage_error() -> None:
    proc = run_demo("--script", "/nonexistent/demo.script")
    assert proc.returncode == 2
    assert "--script" in proc.stderr
