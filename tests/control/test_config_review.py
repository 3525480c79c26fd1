"""Review findings on configuration: secret masking, unreadable state dirs, integer booleans."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from relay_runtime._control import project_policy
from relay_runtime.config import HIDDEN, ConfigError, GatewayConfig, bool_word, string_list
from relay_runtime.connector import RelevancePolicy


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def unsearchable(monkeypatch: pytest.MonkeyPatch, parent: Path) -> None:
    """Make everything under ``parent`` fail ``stat`` as a non-searchable directory does.

    Tests may run as root, whom permissions do not stop, so ``os.stat`` stands in.
    """
    real_stat = os.stat
    prefix = os.fspath(parent) + os.sep

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if os.fspath(path).startswith(prefix):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)


def test_R39_differing_secret_spellings_do_not_print_the_secrets(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_yaml(
        tmp_path,
        "gateway:\n  relay_url: https://c.example\n"
        "  idp:\n    token_url: https://idp.example/token\n    client_id: cid\n"
        "    client_secret: SUPERSECRET-ONE\n"
        "  relay_idp_client_secret: SUPERSECRET-TWO\n",
    )
    with pytest.raises(ConfigError) as info:
        GatewayConfig.load(environ=env, config_path=path)
    text = str(info.value)
    assert "the two spellings differ" in text
    assert "SUPERSECRET" not in text
    assert HIDDEN in text


def test_differing_plain_spellings_still_show_both_values(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_yaml(
        tmp_path,
        "gateway:\n  relay_url: https://a.example\n"
        "platforms:\n  relay:\n    extra:\n      relay_url: https://b.example\n",
    )
    with pytest.raises(ConfigError, match=r"'https://a.example' vs 'https://b.example'"):
        GatewayConfig.load(environ=env, config_path=path)


def test_unsearchable_state_dir_parent_is_a_config_error(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    unsearchable(monkeypatch, locked)
    with pytest.raises(ConfigError) as info:
        GatewayConfig.load(environ=env, args={"state_dir": locked / "sub" / "state"})
    assert info.value.name == "--state-dir"
    assert "permission denied" in info.value.problem.lower()


def test_booleans_accept_yaml_integers_one_and_zero(env: dict[str, str], tmp_path: Path) -> None:
    off = write_yaml(tmp_path, "gateway:\n  relay_url: https://c.example\n  relay_enabled: 0\n")
    assert GatewayConfig.load(environ=env, config_path=off).enabled is False
    on = write_yaml(
        tmp_path, "gateway:\n  relay_url: https://c.example\n  relay_wake_confirmed: 1\n"
    )
    assert GatewayConfig.load(environ=env, config_path=on).wake_confirmed is True
    bad = write_yaml(tmp_path, "gateway:\n  relay_url: https://c.example\n  relay_enabled: 2\n")
    with pytest.raises(ConfigError, match="must be a boolean"):
        GatewayConfig.load(environ=env, config_path=bad)


def test_one_boolean_table_and_one_list_reader_serve_config_control_and_connector() -> None:
    assert [bool_word(w) for w in (" Yes", "ON", "0", "off", "", "maybe")] == [
        True,
        True,
        False,
        False,
        None,
        None,
    ]
    bad: list[object] = []
    assert string_list(" c1, c2 ,,c3 ") == ["c1", "c2", "c3"]
    assert string_list(["a ", 7, None, True, ""], on_bad_item=bad.append) == ["a", "7"]
    assert bad == [None, True]
    assert string_list({"a": 1}) is None
    assert project_policy("discord", {"free_response_channels": " x, y"}, {}) == {
        "platform": "discord",
        "requireAddress": False,
        "freeResponseScopes": ["x", "y"],
        "allowOtherBots": False,
    }
    assert RelevancePolicy(free_response_scopes=" x, y").free_response_scopes == ("x", "y")
