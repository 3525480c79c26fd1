"""Command parsing: `/invite`, `/pay`, `/trust` (TR §6, §8, C11, C20)."""

from __future__ import annotations

import hashlib

import pytest

from trust._commands import (
    InviteCommand,
    PayCommand,
    TrustCommand,
    canonical_invite_code,
    invite_code_digest,
    parse_command,
)
from trust._model import CommandKind


@pytest.mark.parametrize(
    "text", [None, "", "hello", "pay me /invite X", "/start", "/inviter x", " / invite x"]
)
def test_ordinary_messages_are_not_commands(text: str | None) -> None:
    assert parse_command(text) is None


def test_invite_code_is_canonical_and_redacted_in_repr() -> None:
    cmd = parse_command("  /invite abcd-efgh ijkl-mnop ")
    assert cmd == InviteCommand(code="ABCDEFGHIJKLMNOP")
    assert cmd.kind is CommandKind.INVITE
    assert "ABCD" not in repr(cmd)
    assert parse_command("/INVITE@mybot x1y2z3w4") == InviteCommand(code="X1Y2Z3W4")


def test_C20_bare_invite_is_still_an_invite_command() -> None:
    cmd = parse_command("/invite")
    assert cmd == InviteCommand(code=None)
    assert cmd.kind is CommandKind.INVITE


def test_C11_canonical_code_and_digest() -> None:
    assert canonical_invite_code(" wx9z-ab12\tCD34 ") == "WX9ZAB12CD34"
    assert invite_code_digest("wx9z-ab12-cd34") == hashlib.sha256(b"WX9ZAB12CD34").hexdigest()


@pytest.mark.parametrize(
    ("text", "reference", "usage"),
    [
        ("/pay tx_123:abc-9.z", "tx_123:abc-9.z", None),
        ("/pay", None, "usage: /pay REFERENCE"),
        ("/pay a b", None, "usage"),
        ("/pay " + "x" * 129, None, "usage"),
        ("/pay I paid 100", None, "usage"),
    ],
)
def test_pay_reference(text: str, reference: str | None, usage: str | None) -> None:
    cmd = parse_command(text)
    assert isinstance(cmd, PayCommand)
    assert cmd.kind is CommandKind.PAY
    assert cmd.reference == reference
    if usage is None:
        assert cmd.usage is None
    else:
        assert cmd.usage is not None
        assert cmd.usage.startswith(usage)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/trust", TrustCommand(op="help")),
        ("/trust help", TrustCommand(op="help")),
        (
            "/trust promote discord:1 Contact",
            TrustCommand(op="promote", client="discord:1", level="contact"),
        ),
        ("/trust demote x:a stranger", TrustCommand(op="demote", client="x:a", level="stranger")),
        (
            "/trust block x:a spam and abuse",
            TrustCommand(op="block", client="x:a", reason="spam and abuse"),
        ),
        ("/trust unblock x:a", TrustCommand(op="unblock", client="x:a")),
        ("/trust admin set x:a", TrustCommand(op="admin/set", client="x:a")),
        ("/trust ADMIN remove x:a", TrustCommand(op="admin/remove", client="x:a")),
        ("/trust level x:a", TrustCommand(op="level", client="x:a")),
        ("/trust audit", TrustCommand(op="audit")),
        ("/trust audit x:a", TrustCommand(op="audit", client="x:a")),
    ],
)
def test_trust_commands(text: str, expected: TrustCommand) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "/trust promote x:a",
        "/trust promote x:a admin",
        "/trust block x:a",
        "/trust unblock",
        "/trust admin",
        "/trust admin grant x:a",
        "/trust audit a b",
        "/trust nuke x:a",
    ],
)
def test_malformed_trust_commands_carry_usage(text: str) -> None:
    cmd = parse_command(text)
    assert isinstance(cmd, TrustCommand)
    assert cmd.kind is CommandKind.TRUST
    assert cmd.usage is not None
    assert cmd.usage.startswith("usage: /trust")
    assert cmd.client is None
