"""``enroll``, ``provision`` and ``policy`` commands (RC §9, R83 exit codes)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from relay_runtime._cli.control import run_enroll, run_policy, run_provision
from relay_runtime.config import read_env_file
from relay_runtime.connector._control_plane import ControlPlaneRegistry, HttpServer

from ..conftest import IDENTITY_TOKEN, TENANT
from .conftest import parse

# --------------------------------------------------------------------------- enroll


async def test_enroll_persists_credentials_and_hides_secrets(
    plane: HttpServer,
    registry: ControlPlaneRegistry,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GATEWAY_RELAY_IDENTITY_TOKEN", IDENTITY_TOKEN)
    token = registry.issue_enrollment_token(TENANT)
    args = parse(
        "enroll",
        "--token",
        token,
        "--connector-url",
        f"{plane.url}/",
        "--gateway-id",
        "gw-cli",
        "--wake-url",
        "https://wake.example/gw-cli/",
    )
    assert await run_enroll(args) == 0
    env_file = clean_env / "relay.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    stored = read_env_file(env_file)
    secret = registry.secrets_for("gw-cli")[0]
    assert stored == {
        "GATEWAY_RELAY_ID": "gw-cli",
        "GATEWAY_RELAY_SECRET": secret,
        "GATEWAY_RELAY_DELIVERY_KEY": registry.delivery_keys[TENANT],
        "GATEWAY_RELAY_URL": plane.url,
        "GATEWAY_RELAY_WAKE_URL": "https://wake.example/gw-cli",
        "GATEWAY_RELAY_WAKE_CONFIRMED": "1",
    }
    out, err = capsys.readouterr()
    assert secret not in out + err
    assert registry.delivery_keys[TENANT] not in out + err
    assert "GATEWAY_RELAY_SECRET=<hidden>" in out
    assert "GATEWAY_RELAY_DELIVERY_KEY=<hidden>" in out
    assert "Restart the gateway" in out
    assert registry.wake_url_for("gw-cli") == "https://wake.example/gw-cli"


async def test_enroll_reads_token_url_and_wake_url_from_the_environment(
    plane: HttpServer,
    registry: ControlPlaneRegistry,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_RELAY_IDENTITY_TOKEN", IDENTITY_TOKEN)
    monkeypatch.setenv("GATEWAY_RELAY_ENROLL_TOKEN", registry.issue_enrollment_token(TENANT))
    monkeypatch.setenv("GATEWAY_RELAY_URL", plane.url.replace("http://", "ws://") + "/relay")
    monkeypatch.setenv("GATEWAY_RELAY_WAKE_URL", "https://wake.example/env")
    assert await run_enroll(parse("enroll", "--gateway-id", "gw-env")) == 0
    assert registry.received[-1][1]["wakeUrl"] == "https://wake.example/env"
    stored = read_env_file(clean_env / "relay.env")
    assert "GATEWAY_RELAY_URL" not in stored  # only an explicit --connector-url is persisted
    assert stored["GATEWAY_RELAY_WAKE_CONFIRMED"] == "1"


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--connector-url", "http://127.0.0.1:9"], {}, "GATEWAY_RELAY_ENROLL_TOKEN"),
        (["--token", "t"], {}, "--connector-url"),
        (["--token", "t", "--connector-url", "ftp://x"], {}, "--connector-url 'ftp://x'"),
        (["--token", "t", "--connector-url", "http://x", "--wake-url", "x"], {}, "--wake-url"),
        (["--token", "t", "--connector-url", "http://x"], {}, "GATEWAY_RELAY_IDENTITY_TOKEN"),
        (["--token", "t"], {"GATEWAY_RELAY_HTTP_TIMEOUT_S": "-3"}, "GATEWAY_RELAY_HTTP_TIMEOUT_S"),
    ],
)
def test_enroll_usage_errors_exit_2_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    named: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = parse("enroll", *argv)
    assert args.func(args) == 2
    assert named in capsys.readouterr().err


def test_R83_enroll_connector_unreachable_exits_1(
    dead_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_RELAY_IDENTITY_TOKEN", IDENTITY_TOKEN)
    args = parse("enroll", "--token", "t", "--connector-url", dead_url)
    assert args.func(args) == 1
    assert f"Could not reach the connector at {dead_url}: " in capsys.readouterr().err


async def test_R83_enroll_connector_refusal_exits_1_with_its_message(
    plane: HttpServer,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GATEWAY_RELAY_IDENTITY_TOKEN", IDENTITY_TOKEN)
    args = parse("enroll", "--token", "enr_forged", "--connector-url", plane.url)
    assert await run_enroll(args) == 1
    assert "enrollment token invalid or expired" in capsys.readouterr().err
    assert not (clean_env / "relay.env").exists()
    monkeypatch.setenv("GATEWAY_RELAY_IDENTITY_TOKEN", "not-known")
    assert await run_enroll(args) == 1
    assert "could not verify your identity token (HTTP 401)" in capsys.readouterr().err


# --------------------------------------------------------------------------- provision


async def test_provision_command_shows_hidden_credentials(
    plane: HttpServer,
    registry: ControlPlaneRegistry,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GATEWAY_RELAY_IDENTITY_TOKEN", IDENTITY_TOKEN)
    monkeypatch.setenv("GATEWAY_RELAY_PLATFORMS", "discord,slack")
    args = parse("provision", "--relay-url", plane.url, "--gateway-id", "gw-p")
    assert await run_provision(args) == 0
    out, _ = capsys.readouterr()
    assert "provisioned platform=discord" in out
    assert "provisioned platform=slack" in out
    assert "GATEWAY_RELAY_SECRET=<hidden>" in out
    for secret in registry.secrets_for("gw-p"):
        assert secret not in out
    assert not (clean_env / "relay.env").exists()


async def test_provision_command_failures(
    plane: HttpServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_provision(parse("provision")) == 2
    assert "GATEWAY_RELAY_URL" in capsys.readouterr().err
    assert await run_provision(parse("provision", "--relay-url", plane.url)) == 2
    assert "GATEWAY_RELAY_IDENTITY_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("GATEWAY_RELAY_IDENTITY_TOKEN", "unknown-token")
    assert await run_provision(parse("provision", "--relay-url", plane.url)) == 1
    err = capsys.readouterr().err
    assert "connector returned HTTP 401: identity token not recognised" in err


# --------------------------------------------------------------------------- policy


def test_policy_show_prints_the_projection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "discord:\n  require_mention: true\n  free_response_channels: [c-support, c-help]\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("GATEWAY_RELAY_PLATFORMS", "discord,telegram")
    monkeypatch.setenv("TELEGRAM_ALLOW_BOTS", "mentions")
    args = parse("policy", "--show", "--config", str(config))
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        'discord: {"platform":"discord","requireAddress":true,'
        '"freeResponseScopes":["c-support","c-help"],"allowOtherBots":false}',
        'telegram: {"platform":"telegram","requireAddress":false,'
        '"freeResponseScopes":[],"allowOtherBots":true}',
    ]


def test_policy_needs_show_or_send() -> None:
    with pytest.raises(SystemExit) as info:
        parse("policy")
    assert info.value.code == 2


async def test_policy_send_with_pinned_credentials(
    plane: HttpServer,
    registry: ControlPlaneRegistry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "q" * 48
    registry.pin_gateway("gw-pin", secret, tenant=TENANT)
    monkeypatch.setenv("GATEWAY_RELAY_ID", "gw-pin")
    monkeypatch.setenv("GATEWAY_RELAY_SECRET", secret)
    monkeypatch.setenv("GATEWAY_RELAY_PLATFORM", "discord")
    monkeypatch.setenv("DISCORD_ALLOW_BOTS", "all")
    assert await run_policy(parse("policy", "--send", "--relay-url", plane.url)) == 0
    assert "discord: declared" in capsys.readouterr().out
    policy = registry.policy_for("gw-pin", "discord")
    assert policy is not None and policy.allow_other_bots is True
    registry.revoke("gw-pin")
    assert await run_policy(parse("policy", "--send", "--relay-url", plane.url)) == 1
    assert "did not accept" in capsys.readouterr().err


async def test_policy_send_usage_errors(
    plane: HttpServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_RELAY_PLATFORM", "discord")
    monkeypatch.setenv("DISCORD_ALLOW_BOTS", "all")
    assert await run_policy(parse("policy", "--send")) == 2
    assert "GATEWAY_RELAY_URL" in capsys.readouterr().err
    assert await run_policy(parse("policy", "--send", "--relay-url", plane.url)) == 2
    assert "GATEWAY_RELAY_SECRET" in capsys.readouterr().err
