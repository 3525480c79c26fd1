"""The demo console in-process: commands, usage errors, the interactive extras."""

from __future__ import annotations

from relay_runtime._cli.demo import HELP, Demo


async def run_lines(lines: list[str], *, scripted: bool) -> list[str]:
    out: list[str] = []
    demo = Demo(user="demo:alice", scripted=scripted, out=out.append)
    await demo.run(lines, None)
    return out


async def test_help_usage_errors_and_user_switching() -> None:
    out = await run_lines(
        [
            "/help",
            "/as",
            "/as telegram:",
            "/as Telegram:077",
            "/as discord:bob",
            "#",
            "",
            "/quit",
            "x",
        ],
        scripted=True,
    )
    assert HELP in out
    assert any(line.startswith("  usage: /as USER") for line in out)
    assert "  now speaking as telegram:077 (stranger)" in out
    assert "  now speaking as discord:bob (anonymous)" in out  # discord ids are digits
    assert "discord:bob> x" not in out  # /quit ended the session
    assert out[-1] == "bye"


async def test_interactive_mode_shows_real_values_and_the_states_of_a_drop() -> None:
    out = await run_lines(["/drop", "/idle"], scripted=False)
    banner = "\n".join(out[:6])
    assert "<port>" not in banner and "$INVITE" not in banner
    assert "ws://127.0.0.1:" in banner
    drop, idle = [line for line in out if line.startswith("  states seen: ")]
    seen = drop.removeprefix("  states seen: ").split(" -> ")
    assert seen[0] == "ready" and seen[-1] == "ready" and len(seen) >= 3
    seen = idle.removeprefix("  states seen: ").split(" -> ")
    assert seen[:2] == ["ready", "idle_requested"] and seen[-1] == "ready"
    assert any(line.startswith("  socket closed 1000 (going idle)") for line in out)
    assert any(" -> buffered at the connector (buf-" in line for line in out)


async def test_invite_placeholder_is_replaced_by_the_code() -> None:
    out = await run_lines(["/as carol", "/invite $INVITE", "hi"], scripted=True)
    assert "  reply: Invite accepted. You are now a contact." in out
    assert out[-3:] == ["  trust: allow - contact (tier rule)", "  reply: hi", "bye"]


async def test_levels_match_the_banner_and_no_internal_names_leak() -> None:
    # Issue 16: an admin showed as "stranger, admin" under a banner saying "(admin)"; the
    # audit log said "by local:harness/operator"; the state dir was /tmp/relay-harness-*.
    out = await run_lines(["/users", "/trust audit"], scripted=False)
    assert "  demo:alice: admin" in out
    assert "  demo:bob: whitelisted" in out
    assert "  demo:carol: stranger" in out
    banner = "\n".join(out[:6])
    assert "relay-demo-" in banner
    text = "\n".join(out)
    assert "harness" not in text
    assert "/operator" in text and "by local:" in text  # the audit rows of the demo's set-up
