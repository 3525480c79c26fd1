"""Review findings on the control commands: unreadable state dirs exit 2, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from relay_runtime._cli.control import run_enroll
from relay_runtime.connector._control_plane import ControlPlaneRegistry, HttpServer

from ..conftest import IDENTITY_TOKEN, TENANT
from .conftest import parse


def test_enroll_with_an_unsearchable_state_dir_parent_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_stat = os.stat
    prefix = os.fspath(locked) + os.sep

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        # Root is not stopped by permissions: stand in for a parent we may not search.
        if os.fspath(path).startswith(prefix):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    args = parse(
        "enroll",
        "--token",
        "t",
        "--connector-url",
        "http://127.0.0.1:9",
        "--state-dir",
        str(locked / "sub" / "state"),
    )
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "--state-dir" in err
    assert "Permission denied" in err


@pytest.fixture
def env_file_is_a_directory(clean_env: Path) -> Path:
    clean_env.mkdir()
    (clean_env / "relay.env").mkdir()  # a directory where the file should go
    return clean_env


async def test_enroll_that_cannot_write_relay_env_exits_1_naming_the_file(
    env_file_is_a_directory: Path,
    plane: HttpServer,
    registry: ControlPlaneRegistry,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GATEWAY_RELAY_IDENTITY_TOKEN", IDENTITY_TOKEN)
    token = registry.issue_enrollment_token(TENANT)
    args = parse("enroll", "--token", token, "--connector-url", plane.url, "--gateway-id", "gw")
    assert await run_enroll(args) == 1
    assert f"could not write {clean_env / 'relay.env'}" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--connector-url", "--wake-url"])
async def test_enroll_never_shows_the_password_of_a_url(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12: a URL's user:password@ is a credential; the error shows <hidden>@."""
    urls = {"--connector-url": "http://127.0.0.1:9", "--wake-url": "https://w.example"}
    urls[flag] = "ftp://bob:hunter2@w.example"  # refused (scheme): the message shows the URL
    args = parse("enroll", "--token", "t", *(x for kv in urls.items() for x in kv))
    assert await run_enroll(args) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert f"{flag} 'ftp://<hidden>@w.example'" in err
