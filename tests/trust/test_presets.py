"""Presets as package data (TR §4.4, T28, T39)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from trust import decide
from trust._model import ClientState, CommandKind, Decision, InviteCheck, Level, RequestFacts
from trust._policy import PRESETS, load_preset, preset_text

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, trust, trust._policy as p
out = {"file": trust.__file__}
for name in ("open", "careful", "strict"):
    pol = p.load_preset(name)
    out[name] = [pol.name, pol.digest, pol.default, len(pol.fast_rules)]
out["resolved"] = p.resolve_policy(None).name
out["prompt"] = bool(p.builtin_agent_prompt())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built and unzipped into a directory of its own."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=110,
    )
    (wheel,) = dist.glob("relay_runtime-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def test_T28_installed_wheel_loads_open_careful_strict(installed_wheel: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=installed_wheel,
        env={"PYTHONPATH": str(installed_wheel), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert Path(out["file"]).resolve().is_relative_to(installed_wheel.resolve())
    for name in PRESETS:
        got_name, digest, _default, _rules = out[name]
        assert got_name == name
        assert digest == load_preset(name).digest  # the very same bytes as the source tree
    assert out["open"][2:] == ["allow", 0]
    assert out["careful"][2:] == ["deny", 5]
    assert out["strict"][2:] == ["deny", 2]
    assert out["resolved"] == "careful"
    assert out["prompt"] is True


@pytest.mark.parametrize("name", PRESETS)
def test_T39_no_preset_holds_an_invite_code_payment_or_secret(name: str) -> None:
    policy = load_preset(name)
    assert policy.policy_codes == ()
    assert policy.payment is None
    assert not policy.uses_action("verify_payment")
    text = preset_text(name).decode().lower()
    for needle in ("invite_code:", "payment:", "onboard", "openonion", "beta2024", "api_key"):
        assert needle not in text
    assert policy.format == "native"
    assert policy.warnings == ()


def test_careful_matches_the_spec_frontmatter() -> None:
    careful = load_preset("careful")
    assert [(r.action, r.on_success, r.on_failure) for r in careful.fast_rules] == [
        ("allow", None, None),
        ("allow", None, None),
        ("allow", None, None),
        ("verify_invite", "promote_to_contact", "deny"),
        ("deny", None, None),
    ]
    assert careful.cache_s == 24 * 3600
    assert careful.agent_tools == ("get_level", "get_history", "promote_to_contact", "block")
    assert careful.default == "deny"
    assert careful.use_agent[0].reason == "stranger keeps writing; admit as contact or not"
    assert careful.enabled_operations()[0] == "verify/invite"
    assert "verify/payment" not in careful.enabled_operations()


def test_careful_body_instructs_the_agent() -> None:
    body = " ".join(load_preset("careful").body.lower().split())
    assert "unsure, deny" in body
    assert "untrusted" in body
    assert "promote_to_contact" in body
    assert "block" in body
    assert "never whitelist" in body


def test_open_body_says_development_only() -> None:
    assert "development only" in load_preset("open").body.lower()


def test_strict_invites_are_not_accepted() -> None:
    strict = load_preset("strict")
    assert "verify/invite" not in strict.enabled_operations()
    got = decide(
        strict,
        ClientState("x:1"),
        RequestFacts(command=CommandKind.INVITE, invite=InviteCheck(True, invite_id="i")),
    )
    assert isinstance(got, Decision)
    assert (got.allow, got.reason) == (False, "stranger denied by strict")
    whitelisted = decide(strict, ClientState("x:1", level=Level.WHITELIST), RequestFacts())
    assert isinstance(whitelisted, Decision)
    assert whitelisted.allow is True
