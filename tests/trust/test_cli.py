"""``relay-runtime trust ...`` against a real SQLite state directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from trust._cli import local_actor, main
from trust._records import ClientRecord
from trust._store import open_sqlite_store

PRESET_DIR = Path(__file__).resolve().parents[2] / "trust" / "presets"


def run(tmp_path: Path, *argv: str) -> int:
    return main(
        [argv[0], *argv[1:], "--state-dir", str(tmp_path)] if argv[0] != "policy" else list(argv)
    )


def get(tmp_path: Path, cid: str) -> ClientRecord:
    async def read() -> ClientRecord:
        store = await open_sqlite_store(tmp_path)
        try:
            return await store.get(cid)
        finally:
            await store.aclose()

    return trio.run(read)


def test_T6_block_without_colon_fails_invalid_client_id_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, "block", "nocolon", "--reason", "x") == 2  # a usage error (issue 16)
    assert "invalid client id" in capsys.readouterr().err
    assert main(["list", "--state-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_promote_block_show_audit_revert_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, "promote", "Discord: 0123", "--to", "contact") == 0
    out = capsys.readouterr().out
    assert out.startswith("discord:123 promoted: stranger → contact (audit #1)")
    assert run(tmp_path, "promote", "discord:5", "--to", "whitelist") == 1
    assert "must be a contact first" in capsys.readouterr().err
    assert run(tmp_path, "block", "discord:123", "--reason", "spam") == 0
    capsys.readouterr()
    assert run(tmp_path, "show", "discord:123") == 0
    assert capsys.readouterr().out.strip() == "discord:123: blocked (level contact; reason: spam)"
    assert run(tmp_path, "audit", "--client", "discord:123", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in rows] == ["block", "promote_to_contact"]
    assert {r["actor"] for r in rows} == {local_actor()}
    assert {r["tier"] for r in rows} == {"operator"}
    assert run(tmp_path, "revert", str(rows[0]["id"])) == 0
    capsys.readouterr()
    assert not get(tmp_path, "discord:123").blocked
    assert run(tmp_path, "admin", "set", "discord:123") == 0
    assert run(tmp_path, "list", "--admins") == 0
    assert "discord:123: contact, admin" in capsys.readouterr().out


def test_T49_invite_create_shows_code_once_list_never(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "invite",
                "create",
                "--max-uses",
                "2",
                "--note",
                "bob",
                "--json",
                "--state-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    created = json.loads(capsys.readouterr().out)
    code = created["code"]
    assert main(["invite", "list", "--state-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert created["invite_id"] in listing and "uses 0/2" in listing
    assert code not in listing and code.replace("-", "") not in listing
    assert main(["invite", "list", "--json", "--state-dir", str(tmp_path)]) == 0
    assert code not in capsys.readouterr().out
    assert main(["invite", "revoke", created["invite_id"], "--state-dir", str(tmp_path)]) == 0
    assert main(["invite", "revoke", created["invite_id"], "--state-dir", str(tmp_path)]) == 1
    assert main(["invite", "create", "--expires", "1w", "--state-dir", str(tmp_path)]) == 1


def test_T70_policy_check_exits_2_on_bad_files_0_on_presets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for preset in ("open", "careful", "strict"):
        assert main(["policy", "check", str(PRESET_DIR / f"{preset}.md")]) == 0
    bad = tmp_path / "bad.md"
    bad.write_text("---\nname: bad\ndefault: yes\ncache: 1w\n---\nbody\n")
    assert main(["policy", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "quotes" in err
    assert main(["policy", "check", str(tmp_path / "missing.md")]) == 2
    legacy = tmp_path / "legacy.md"
    legacy.write_text("---\nallow: [whitelisted, contact]\ndefault: deny\n---\n")
    assert main(["policy", "check", str(legacy)]) == 0
    assert "native translation" in capsys.readouterr().out


def test_C28_policy_show_and_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["policy", "show", "careful"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("policy careful")
    assert "default: deny" in out[-2]
    monkeypatch.chdir(tmp_path)
    assert main(["policy", "copy", "strict"]) == 0
    written = tmp_path / "policies" / "strict.md"
    assert written.read_bytes() == (PRESET_DIR / "strict.md").read_bytes()
    assert "--trust policies/strict.md" in capsys.readouterr().out
    assert main(["policy", "copy", "strict"]) == 1
    assert main(["policy", "copy", "strict", "--force"]) == 0


def _co_dir(tmp_path: Path) -> Path:
    co = tmp_path / "co"
    co.mkdir()
    a, b, c = ("0x" + ch * 64 for ch in "abc")
    (co / "whitelist.txt").write_text(f"# trusted\n{a.upper().replace('0X', '0x')}\n\n{b}\n")
    (co / "contacts.txt").write_text(f"{a}\na-*\n{c}\nnot-an-address\n")
    (co / "blocklist.txt").write_text(f"{b}\n*\n")
    (co / "admins.txt").write_text(f"{c}\n")
    return co


def test_T27_import_co_skips_patterns_and_keeps_precedence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    co = _co_dir(tmp_path)
    state = tmp_path / "state"
    assert main(["import-co", str(co), "--dry-run", "--json", "--state-dir", str(state)]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert len(dry["changed"]) == 3 and dry["audit_ids"] == []
    assert main(["import-co", str(co), "--json", "--state-dir", str(state)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["skipped"]) == 3
    assert any("'a-*'" in s for s in report["skipped"])
    assert any("'*'" in s for s in report["skipped"])
    a, b, c = (f"co:0x{ch * 64}" for ch in "abc")
    assert (get(state, a).level.value, get(state, a).blocked) == ("whitelist", False)
    # blocklist + whitelist → whitelist + blocked
    assert (get(state, b).level.value, get(state, b).blocked) == ("whitelist", True)
    assert (get(state, c).level.value, get(state, c).is_admin) == ("contact", True)
    assert get(state, "co:a-").stored is False
    # Re-importing changes nothing; a client stored differently is a conflict.
    assert main(["demote", b, "--to", "contact", "--state-dir", str(state)]) == 1  # blocked
    assert main(["unblock", b, "--state-dir", str(state)]) == 0
    capsys.readouterr()
    assert main(["import-co", str(co), "--json", "--state-dir", str(state)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["changed"], again["conflicts"]) == ([], [b])
    assert main(["import-co", str(co), "--overwrite", "--json", "--state-dir", str(state)]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] == [b]
    assert get(state, b).blocked


def test_T26_unreadable_list_file_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Root reads any file whatever its mode, so "unreadable" is made two ways that fail for
    # root too: bytes that are not UTF-8, and a directory where a list file should be.
    co = _co_dir(tmp_path)
    (co / "admins.txt").write_bytes(b"\xff\xfe bad")
    state = tmp_path / "state"
    assert main(["import-co", str(co), "--state-dir", str(state)]) == 1
    assert "nothing imported" in capsys.readouterr().err
    assert get(state, f"co:0x{'a' * 64}").stored is False
    (co / "admins.txt").unlink()
    (co / "blocklist.txt").rename(co / "blocklist.d")
    (co / "blocklist.txt").mkdir()
    assert main(["import-co", str(co), "--state-dir", str(state)]) == 1
    assert get(state, f"co:0x{'a' * 64}").stored is False


def test_a_mistyped_trust_variable_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_TRUST_INVITE_FAILURES_PER_HOUR", "0")
    assert run(tmp_path, "list") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "RELAY_TRUST_INVITE_FAILURES_PER_HOUR='0': expected an integer in 1..1000000" in err
