"""RC §10 configuration (R85-R89) and the rest of the validation table."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from protocol import Identity
from relay_runtime.config import (
    HIDDEN,
    BotIdEntry,
    ConfigError,
    GatewayConfig,
    default_state_dir,
)

SECRET = "s3cr3t-" + "x" * 40


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment whose state dir lives under tmp_path."""
    return {"XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- defaults


def test_relay_url_alone_constructs_with_rc10_defaults(env: dict[str, str]) -> None:
    config = GatewayConfig(relay_url="https://c.example/")
    assert config.relay_url == "https://c.example"
    assert config.dial_url == "wss://c.example/relay"
    assert config.enabled is True
    assert config.relay_active is True
    assert config.identities == (Identity(platform="relay", bot_id=""),)
    assert (config.max_frame_bytes, config.http_timeout_s, config.token_ttl_s) == (
        1_048_576,
        15.0,
        300,
    )
    assert (config.ping_interval_s, config.ping_timeout_s) == (30.0, 60.0)
    assert (config.backoff_base_s, config.backoff_cap_s, config.stable_after_s) == (1, 30, 60)
    assert (config.max_concurrent_turns, config.max_pending_inbound) == (16, 1000)
    assert (config.outbox_max, config.outbox_ttl_s) == (1000, 86_400)
    assert (config.dedupe_window_s, config.dedupe_max) == (86_400, 10_000)
    assert config.group_sessions_per_user is True
    assert config.thread_sessions_per_user is False
    assert config.trust == "careful"
    assert config.state_dir.name == "relay-runtime"


def test_state_dir_default_is_xdg_then_local_state(env: dict[str, str], tmp_path: Path) -> None:
    assert default_state_dir(env) == tmp_path / "xdg" / "relay-runtime"
    no_xdg = {"HOME": str(tmp_path / "home")}
    assert default_state_dir(no_xdg) == tmp_path / "home" / ".local/state/relay-runtime"
    relative_xdg = {"XDG_STATE_HOME": "rel", "HOME": str(tmp_path / "home")}
    assert default_state_dir(relative_xdg) == tmp_path / "home" / ".local/state/relay-runtime"
    assert GatewayConfig.from_env(env).state_dir == tmp_path / "xdg" / "relay-runtime"


def test_from_env_without_anything_has_no_relay(env: dict[str, str]) -> None:
    config = GatewayConfig.from_env(env)
    assert config.relay_url is None
    assert config.dial_url is None
    assert config.relay_active is False


# --------------------------------------------------------------------------- R85


def test_R85_precedence_argument_env_file_default(env: dict[str, str], tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "gateway:\n"
        "  relay_url: https://file.example\n"
        "  relay_http_timeout_s: 7\n"
        "  relay_outbound_timeout_s: 9\n"
        "  relay_max_concurrent_turns: 4\n",
    )
    env |= {
        "GATEWAY_RELAY_URL": "https://env.example",
        "GATEWAY_RELAY_HTTP_TIMEOUT_S": "11",
    }
    config = GatewayConfig.load(
        args={"relay_url": "https://arg.example"}, environ=env, config_path=path
    )
    assert config.relay_url == "https://arg.example"  # argument beats env and file
    assert config.http_timeout_s == 11.0  # env beats file
    assert config.outbound_timeout_s == 9.0  # file beats default
    assert config.max_concurrent_turns == 4
    assert config.handshake_timeout_s == 30.0  # default

    without_arg = GatewayConfig.load(environ=env, config_path=path)
    assert without_arg.relay_url == "https://env.example"


def test_R85_empty_env_values_are_unset(env: dict[str, str], tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "gateway:\n  relay_url: https://file.example\n")
    env |= {"GATEWAY_RELAY_URL": "   ", "GATEWAY_RELAY_PLATFORM": "", "RELAY_TRUST": ""}
    config = GatewayConfig.load(environ=env, config_path=path)
    assert config.relay_url == "https://file.example"
    assert config.platform == "relay"
    assert config.trust == "careful"
    # None / "" arguments are "not given" too.
    config = GatewayConfig.load(
        args={"relay_url": None, "trust": ""}, environ=env, config_path=path
    )
    assert config.relay_url == "https://file.example"


def test_R85_trust_and_state_dir_from_env_and_arguments(
    env: dict[str, str], tmp_path: Path
) -> None:
    env |= {"RELAY_TRUST": "strict", "RELAY_STATE_DIR": str(tmp_path / "envstate")}
    config = GatewayConfig.from_env(env)
    assert config.trust == "strict"
    assert config.state_dir == tmp_path / "envstate"
    config = GatewayConfig.load(
        args={"trust": "open", "state_dir": str(tmp_path / "argstate")}, environ=env
    )
    assert (config.trust, config.state_dir) == ("open", tmp_path / "argstate")


def test_R85_relay_env_file_sits_below_the_process_environment(
    env: dict[str, str], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "relay.env").write_text(
        f"# written by enroll\nGATEWAY_RELAY_ID=gw-enrolled\nGATEWAY_RELAY_SECRET={SECRET}\n"
        "GATEWAY_RELAY_WAKE_CONFIRMED=1\nGATEWAY_RELAY_URL=https://enrolled.example\n",
        encoding="utf-8",
    )
    (state / "relay.env").chmod(0o600)  # a relay.env others can read is refused
    env |= {"RELAY_STATE_DIR": str(state), "GATEWAY_RELAY_URL": "https://env.example"}
    config = GatewayConfig.from_env(env)
    assert config.gateway_id == "gw-enrolled"
    assert config.secret == SECRET
    assert config.wake_confirmed is True
    assert config.relay_url == "https://env.example"
    assert config.has_pinned_credentials


def test_unknown_argument_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="relay_urll"):
        GatewayConfig.load(args={"relay_urll": "https://x"}, environ=env)


# --------------------------------------------------------------------------- R86


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("GATEWAY_RELAY_URL", "ftp://c.example", "scheme"),
        ("GATEWAY_RELAY_URL", "https://c.example/?x=1", "query"),
        ("GATEWAY_RELAY_URL", "https://c.example/#f", "fragment"),
        ("GATEWAY_RELAY_URL", "https:///relay", "no host"),
        ("GATEWAY_RELAY_ENABLED", "maybe", "boolean"),
        ("GATEWAY_RELAY_PLATFORM", "Discord!", "must match"),
        ("GATEWAY_RELAY_PLATFORMS", "discord,_bad", "must match"),
        ("GATEWAY_RELAY_ENDPOINT", "ws://c.example", "http(s)"),
        ("GATEWAY_RELAY_WAKE_URL", "wake.example", "http(s)"),
        ("GATEWAY_RELAY_WAKE_CONFIRMED", "2", "boolean"),
        ("GATEWAY_RELAY_MAX_FRAME_BYTES", "1023", "an integer from 1024 to 67108864"),
        ("GATEWAY_RELAY_MAX_FRAME_BYTES", "1.5e6", "integer"),
        ("GATEWAY_RELAY_HANDSHAKE_TIMEOUT_S", "0", "seconds from 0.1 to 3600"),
        ("GATEWAY_RELAY_OUTBOUND_TIMEOUT_S", "-1", "seconds from 0.1 to 3600"),
        ("GATEWAY_RELAY_IDLE_ACK_TIMEOUT_S", "soon", "seconds"),
        ("GATEWAY_RELAY_HTTP_TIMEOUT_S", "nan", "seconds from 0.1 to 3600"),
        ("GATEWAY_RELAY_TOKEN_TTL_S", "0", "an integer from 10 to 600"),
        ("GATEWAY_RELAY_PING_INTERVAL_S", "inf", "seconds from 1 to 3600"),
        ("GATEWAY_RELAY_PING_TIMEOUT_S", "10", "GATEWAY_RELAY_PING_INTERVAL_S"),
        ("GATEWAY_RELAY_BACKOFF_CAP_S", "0.5", "GATEWAY_RELAY_BACKOFF_BASE_S"),
        ("GATEWAY_RELAY_STABLE_AFTER_S", "0", "seconds from 0.01 to 86400"),
        ("GATEWAY_RELAY_MAX_CONCURRENT_TURNS", "0", "an integer from 1 to 10000"),
        ("GATEWAY_RELAY_MAX_PENDING_INBOUND", "8", "GATEWAY_RELAY_MAX_CONCURRENT_TURNS"),
        ("GATEWAY_RELAY_OUTBOX_MAX", "-1", "an integer from 0 to 1000000"),
        ("GATEWAY_RELAY_OUTBOX_TTL_S", "0", "an integer from 1 to 2592000"),
        ("GATEWAY_RELAY_DEDUPE_WINDOW_S", "x", "integer"),
        ("GATEWAY_RELAY_DEDUPE_MAX", "0", "an integer from 1 to 10000000"),
        ("GATEWAY_RELAY_GROUP_SESSIONS_PER_USER", "sometimes", "boolean"),
        ("GATEWAY_RELAY_THREAD_SESSIONS_PER_USER", "2", "boolean"),
        ("GATEWAY_RELAY_IDP_TOKEN_URL", "https://idp.example/token", "CLIENT_ID"),
    ],
)
def test_R86_invalid_value_raises_config_error_naming_the_variable(
    env: dict[str, str], variable: str, value: str, problem: str
) -> None:
    env[variable] = value
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_env(env)
    assert info.value.name == variable
    assert problem in str(info.value)


def test_R86_outbox_max_zero_is_fail_fast_not_an_error(env: dict[str, str]) -> None:
    env["GATEWAY_RELAY_OUTBOX_MAX"] = "0"
    assert GatewayConfig.from_env(env).outbox_max == 0


def test_R86_secret_values_are_masked_in_errors_and_repr(env: dict[str, str]) -> None:
    env |= {"GATEWAY_RELAY_ID": "gw-1", "GATEWAY_RELAY_SECRET": SECRET}
    env |= {"GATEWAY_RELAY_IDENTITY_TOKEN": "idtok-very-secret"}
    config = GatewayConfig.from_env(env)
    shown = repr(config)
    assert SECRET not in shown
    assert "idtok-very-secret" not in shown
    assert f"secret={HIDDEN}" in shown
    assert f"identity_token={HIDDEN}" in shown
    assert "delivery_key=None" in shown
    with pytest.raises(ConfigError) as info:
        GatewayConfig(relay_url="https://c", gateway_id="g", secret=["not", "text"])  # type: ignore[arg-type]
    assert "not" not in str(info.value).replace("not text", "")
    assert HIDDEN in str(info.value)


def test_R86_constructor_validates_with_field_names() -> None:
    with pytest.raises(ConfigError) as info:
        GatewayConfig(relay_url="https://c.example", max_frame_bytes=10)
    assert info.value.name == "max_frame_bytes"
    with pytest.raises(ConfigError) as info:
        GatewayConfig(relay_url="https://c.example", ping_interval_s=90)
    assert info.value.name == "ping_timeout_s"
    assert "ping_interval_s" in info.value.problem


def test_R86_config_file_errors_name_the_key_and_file(env: dict[str, str], tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "gateway:\n  relay_max_frame_bytes: lots\n")
    with pytest.raises(ConfigError) as info:
        GatewayConfig.load(environ=env, config_path=path)
    assert info.value.name == f"gateway.relay_max_frame_bytes in {path}"
    assert "'lots'" in str(info.value)


def test_R86_unparsable_config_file_names_the_file(env: dict[str, str], tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "gateway: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        GatewayConfig.load(environ=env, config_path=path)
    assert info.value.name == str(path)
    assert "not valid YAML" in info.value.problem
    with pytest.raises(ConfigError, match="must hold a YAML mapping"):
        GatewayConfig.from_file(write_yaml(tmp_path, "- a list\n"))
    with pytest.raises(ConfigError, match="cannot read the config file"):
        GatewayConfig.from_file(tmp_path / "missing.yaml")


def test_R86_two_differing_url_spellings_name_both(env: dict[str, str], tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "gateway:\n  relay_url: https://a.example\n"
        "platforms:\n  relay:\n    extra:\n      relay_url: https://b.example\n",
    )
    with pytest.raises(ConfigError) as info:
        GatewayConfig.load(environ=env, config_path=path)
    assert "gateway.relay_url" in info.value.name
    assert "platforms.relay.extra.relay_url" in info.value.name
    same = write_yaml(
        tmp_path,
        "gateway:\n  relay_url: https://a.example/\n"
        "platforms:\n  relay:\n    extra:\n      relay_url: https://a.example\n",
    )
    assert GatewayConfig.from_file(same).relay_url == "https://a.example"


def test_R86_state_dir_must_be_creatable(env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    env["RELAY_STATE_DIR"] = str(blocker / "state")
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_env(env)
    assert info.value.name == "RELAY_STATE_DIR"
    assert "not a directory" in info.value.problem


def test_R86_state_dir_must_be_writable(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, for whom every directory is writable: stand in for the check.
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    env["RELAY_STATE_DIR"] = str(locked / "state")
    with pytest.raises(ConfigError, match="cannot be created"):
        GatewayConfig.from_env(env)
    env["RELAY_STATE_DIR"] = str(locked)
    with pytest.raises(ConfigError, match="cannot be written"):
        GatewayConfig.from_env(env)


def test_booleans_accept_every_spelling(env: dict[str, str]) -> None:
    for text, expected in [("1", True), ("TRUE", True), ("yes", True), ("On", True)]:
        env["GATEWAY_RELAY_WAKE_CONFIRMED"] = text
        assert GatewayConfig.from_env(env).wake_confirmed is expected
    for text in ["0", "false", "No", "OFF"]:
        env["GATEWAY_RELAY_ENABLED"] = text
        assert GatewayConfig.from_env(env).enabled is False


def test_short_secret_logs_a_warning_without_the_secret(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    env |= {"GATEWAY_RELAY_ID": "gw", "GATEWAY_RELAY_SECRET": "short-secret-value"}
    with caplog.at_level(logging.WARNING, logger="relay_runtime.config"):
        GatewayConfig.from_env(env)
    assert "GATEWAY_RELAY_SECRET is shorter than 32" in caplog.text
    assert "short-secret-value" not in caplog.text


def test_route_keys_and_wake_url_normalization(env: dict[str, str], tmp_path: Path) -> None:
    env |= {"GATEWAY_RELAY_ROUTE_KEYS": " g1, ,g2 ", "GATEWAY_RELAY_WAKE_URL": "https://w.ex/p/"}
    config = GatewayConfig.from_env(env)
    assert config.route_keys == ("g1", "g2")
    assert config.wake_url == "https://w.ex/p"
    path = write_yaml(tmp_path, "gateway:\n  relay_route_keys: [a, ' b ']\n")
    assert GatewayConfig.from_file(path).route_keys == ("a", "b")


def test_idp_settings_from_the_gateway_idp_block(env: dict[str, str], tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "gateway:\n  idp:\n    token_url: https://idp.example/token\n"
        "    client_id: cid\n    client_secret: csecret\n    scope: relay\n",
    )
    config = GatewayConfig.load(environ=env, config_path=path)
    assert config.idp_token_url == "https://idp.example/token"
    assert (config.idp_client_id, config.idp_client_secret, config.idp_scope) == (
        "cid",
        "csecret",
        "relay",
    )
    assert "csecret" not in repr(config)


# --------------------------------------------------------------------------- R87


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '"text"', "42"])
def test_R87_malformed_bot_ids_warns_and_is_empty(
    env: dict[str, str], raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    env |= {"GATEWAY_RELAY_BOT_IDS": raw, "GATEWAY_RELAY_PLATFORMS": "discord"}
    with caplog.at_level(logging.WARNING, logger="relay_runtime.config"):
        config = GatewayConfig.from_env(env)
    assert dict(config.bot_ids) == {}
    assert config.identities == (Identity(platform="discord", bot_id=""),)
    assert "GATEWAY_RELAY_BOT_IDS" in caplog.text
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_R87_bad_entries_are_skipped_with_a_warning(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    env["GATEWAY_RELAY_BOT_IDS"] = (
        '{"discord": {"botId": 123, "username": "bot"}, "slack": "nope", "x": {"botId": true}}'
    )
    with caplog.at_level(logging.WARNING, logger="relay_runtime.config"):
        config = GatewayConfig.from_env(env)
    assert dict(config.bot_ids) == {"discord": BotIdEntry(bot_id="123", username="bot")}
    assert "'slack'" in caplog.text
    assert "'x'" in caplog.text


# --------------------------------------------------------------------------- R88


def test_R88_platforms_yield_identities_in_order_with_mapped_bot_ids(
    env: dict[str, str],
) -> None:
    env |= {
        "GATEWAY_RELAY_PLATFORMS": "telegram, discord ,slack",
        "GATEWAY_RELAY_BOT_IDS": '{"discord": {"botId": "D1"}, "telegram": {"botId": "T1"}}',
        "GATEWAY_RELAY_PLATFORM": "slack",
        "GATEWAY_RELAY_BOT_ID": "S-single",
    }
    config = GatewayConfig.from_env(env)
    assert config.identities == (
        Identity(platform="telegram", bot_id="T1"),
        Identity(platform="discord", bot_id="D1"),
        # Missing entry: _BOT_ID because the platform equals _PLATFORM (our choice).
        Identity(platform="slack", bot_id="S-single"),
    )


def test_R88_missing_entry_for_another_platform_is_empty(env: dict[str, str]) -> None:
    env |= {"GATEWAY_RELAY_PLATFORMS": "discord,telegram", "GATEWAY_RELAY_BOT_ID": "B"}
    assert GatewayConfig.from_env(env).identities == (
        Identity(platform="discord", bot_id=""),
        Identity(platform="telegram", bot_id=""),
    )


def test_R88_single_identity_without_platforms(env: dict[str, str]) -> None:
    env |= {"GATEWAY_RELAY_PLATFORM": "discord", "GATEWAY_RELAY_BOT_ID": "123"}
    assert GatewayConfig.from_env(env).identities == (Identity(platform="discord", bot_id="123"),)


def test_R88_duplicate_platforms_are_an_error(env: dict[str, str], tmp_path: Path) -> None:
    env["GATEWAY_RELAY_PLATFORMS"] = "discord,telegram,discord"
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_env(env)
    assert info.value.name == "GATEWAY_RELAY_PLATFORMS"
    assert "'discord' is listed twice" in info.value.problem
    path = write_yaml(tmp_path, "gateway:\n  relay_platforms: [slack, slack]\n")
    with pytest.raises(ConfigError, match="listed twice"):
        GatewayConfig.from_file(path)


def test_R88_platforms_as_a_config_list(env: dict[str, str], tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "gateway:\n  relay_platforms: [discord, telegram]\n"
        "  relay_bot_ids: {discord: {botId: D}}\n",
    )
    assert GatewayConfig.from_file(path).identities == (
        Identity(platform="discord", bot_id="D"),
        Identity(platform="telegram", bot_id=""),
    )


# --------------------------------------------------------------------------- R89


def test_R89_platforms_relay_enabled_false_vetoes_a_url(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_yaml(tmp_path, "platforms:\n  relay:\n    enabled: false\n")
    env["GATEWAY_RELAY_URL"] = "https://c.example"
    config = GatewayConfig.load(environ=env, config_path=path)
    assert config.relay_url == "https://c.example"
    assert config.enabled is False
    assert config.relay_active is False
    both = write_yaml(
        tmp_path,
        "gateway:\n  relay_enabled: true\nplatforms:\n  relay:\n    enabled: false\n",
    )
    assert GatewayConfig.load(environ=env, config_path=both).relay_active is False


def test_R89_secret_without_id_is_an_error(env: dict[str, str], tmp_path: Path) -> None:
    env["GATEWAY_RELAY_SECRET"] = SECRET
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_env(env)
    assert info.value.name == "GATEWAY_RELAY_SECRET"
    assert "GATEWAY_RELAY_ID" in info.value.problem
    assert SECRET not in str(info.value)
    path = write_yaml(tmp_path, f"gateway:\n  relay_secret: {SECRET}\n")
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_file(path)
    assert info.value.name == f"gateway.relay_secret in {path}"


def test_R89_group_sessions_non_bool_in_file_is_an_error(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_yaml(tmp_path, "gateway:\n  relay_group_sessions_per_user: 3\n")
    with pytest.raises(ConfigError, match="relay_group_sessions_per_user"):
        GatewayConfig.from_file(path)
    ok = write_yaml(tmp_path, "gateway:\n  relay_thread_sessions_per_user: yes\n")
    assert GatewayConfig.from_file(ok).thread_sessions_per_user is True


def test_allow_bots_are_captured_for_identity_platforms(env: dict[str, str]) -> None:
    env |= {
        "GATEWAY_RELAY_PLATFORMS": "discord,slack",
        "DISCORD_ALLOW_BOTS": " ALL ",
        "TELEGRAM_ALLOW_BOTS": "all",
    }
    assert dict(GatewayConfig.from_env(env).allow_bots) == {"discord": "all"}
