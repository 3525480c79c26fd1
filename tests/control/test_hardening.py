"""Issue 12, configuration: ranges, dialable URLs, bounded config files, unknown names, logs.

Every bad input is fed through the real ``relay-runtime`` entry point (:func:`main`, in
process, output captured) where the point is the one line and the exit status; the library
checks are exercised directly where the point is the rule itself.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio

from protocol._urls import host_problem, redact_url, relay_url_problem
from relay_runtime._cli import main
from relay_runtime._logs import mask_text
from relay_runtime._transport import DialError, dial, websocket_dialer
from relay_runtime.config import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    ConfigError,
    GatewayConfig,
    warn_if_plain_text,
)
from tests.e2e.conftest import GUARD_S, gateway_env, gateway_process, new_secret

LONG_LABEL = "a" * 64
PREFIX = "relay-runtime: error: "


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No relay settings from the outer environment; HOME and the state dir under tmp_path."""
    for name in list(os.environ):
        if name.startswith(("GATEWAY_RELAY_", "RELAY_", "XDG_")) or name.endswith("_ALLOW_BOTS"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``relay-runtime run ARGV`` in process: exit status and stderr."""
    status = main(["run", *argv])
    return status, capsys.readouterr().err


def one_error(err: str) -> str:
    """The message of the single error line ``err`` must be (no traceback, nothing else)."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), err
    return lines[0][len(PREFIX) :]


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "GATEWAY_RELAY_HANDSHAKE_TIMEOUT_S",
            "1e-300",
            "must be a number of seconds from 0.1 to 3600 (value '1e-300')",
        ),
        (
            "GATEWAY_RELAY_MAX_FRAME_BYTES",
            "1e20",
            "must be an integer from 1024 to 67108864 (value '1e20')",
        ),
        (
            "GATEWAY_RELAY_MAX_FRAME_BYTES",
            "100000000000000000000",
            "must be an integer from 1024 to 67108864 (value '100000000000000000000')",
        ),
        (
            "GATEWAY_RELAY_TOKEN_TTL_S",
            "99999999999",
            "must be an integer from 10 to 600 (value '99999999999')",
        ),
        (
            "GATEWAY_RELAY_BACKOFF_BASE_S",
            "1e308",
            "must be a number of seconds from 0.001 to 3600 (value '1e308')",
        ),
        (
            "GATEWAY_RELAY_BACKOFF_CAP_S",
            "1e308",
            "must be a number of seconds from 0.001 to 86400 (value '1e308')",
        ),
        (
            "GATEWAY_RELAY_DEDUPE_WINDOW_S",
            "9" * 5000,
            "must be an integer from 1 to 2592000 (value '" + "9" * 76 + "...)",
        ),
    ],
    ids=["handshake", "frame-float", "frame-huge", "ttl", "backoff-base", "backoff-cap", "digits"],
)
def test_extreme_values_are_one_line_exit_2_naming_key_value_and_range(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    status, err = run(capsys, "--relay-url", "ws://127.0.0.1:9")
    assert status == 2
    assert one_error(err) == f"{variable}: {message}"


RANGE = re.compile(r"must be (?:an integer|a number of seconds) from (\S+) to (\S+) \(value")


def test_every_numeric_setting_has_a_range_in_the_docs() -> None:
    """The ranges in docs/configuration.md are the ones the parsers enforce: each numeric
    setting's range as its ConfigError states it, for a value that is not a number."""
    docs = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    checked = 0
    for field in attrs.fields(GatewayConfig):
        try:
            GatewayConfig(**{field.name: "not-a-number"})
            continue  # a setting that degrades instead of failing: not a number
        except ConfigError as exc:
            error = exc
        assert error.name == field.name, error  # the value given, not one from elsewhere
        found = RANGE.match(error.problem)
        if found is None:
            continue  # not a numeric setting
        low, high = found.groups()
        row = next(line for line in docs.splitlines() if f"`{field.name}`" in line)
        assert f"{low} to {high}" in row.replace(",", ""), (field.name, row)
        checked += 1
    assert checked == 20  # issue 11 added turns_max and storage_failure_limit_s, 13 lease_ttl_s


def test_the_ranges_hold_in_the_constructor_and_the_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="from 1 to 3600"):
        GatewayConfig(relay_url="wss://c.example", ping_interval_s=0.5)
    path = tmp_path / "c.yaml"
    path.write_text("gateway:\n  relay_outbox_ttl_s: 99999999999\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_file(path)
    assert str(info.value) == (
        f"gateway.relay_outbox_ttl_s in {path}: must be an integer from 1 to 2592000 "
        "(value 99999999999)"
    )


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ws://a..b", "--relay-url: host 'a..b' has an empty label (value 'ws://a..b')"),
        (
            f"ws://{LONG_LABEL}.com",
            f"--relay-url: host '{LONG_LABEL}.com' has a label longer than 63 characters "
            f"(value 'ws://{LONG_LABEL}.com')",
        ),
        ("ws://h:0", "--relay-url: has port 0 (a port must be 1-65535) (value 'ws://h:0')"),
        (
            "ws://h:99999",
            "--relay-url: is not a valid URL (Port out of range 0-65535) (value 'ws://h:99999')",
        ),
        ("wss://-x.example", "--relay-url: host '-x.example' has a label that starts or ends "
         "with '-' (value 'wss://-x.example')"),
        (
            "ws://user:pw@relay.example",
            "--relay-url: must not contain user:password@ (the gateway authenticates with its "
            "token) (value 'ws://<hidden>@relay.example')",
        ),
    ],
)  # fmt: skip
def test_a_url_the_dialer_cannot_use_is_refused_at_start(
    capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    status, err = run(capsys, "--relay-url", url)
    assert status == 2
    assert one_error(err) == message
    assert "pw" not in err


@pytest.mark.parametrize(
    "host",
    ["a..b", f"{LONG_LABEL}.example", "éx..com", "exa mple.com", ".", "a" * 254, "ab-.c"],
)
def test_host_problem_catches_what_the_resolver_would_raise_on(host: str) -> None:
    assert host_problem(host) is not None


@pytest.mark.parametrize(
    "host", ["connector.example", "127.0.0.1", "::1", "my_service", "bücher.example", "a.b."]
)
def test_host_problem_accepts_dialable_hosts(host: str) -> None:
    assert host_problem(host) is None


async def test_dial_never_raises_on_a_url_the_resolver_cannot_encode() -> None:
    """Defence in depth: a UnicodeError (a ValueError) in the dialer is a DialError."""
    for url in ("ws://a..b/relay", f"wss://{LONG_LABEL}.example/relay", "ws://h:x/relay"):
        async with trio.open_nursery() as nursery:
            with pytest.raises(DialError, match="cannot dial this URL"):
                await dial(
                    websocket_dialer, nursery, url, headers=[], max_message_size=1024, timeout_s=5
                )


def test_userinfo_is_redacted_everywhere_a_url_is_shown() -> None:
    assert redact_url("ws://user:pw@host:9/relay") == "ws://<hidden>@host:9/relay"
    assert redact_url("https://host/relay") == "https://host/relay"
    assert redact_url("ws://u:pw@[::1/x") == "ws://<hidden>@[::1/x"  # unparsable, still hidden
    assert mask_text("dialing wss://bob:hunter2@c.example/relay now") == (
        "dialing wss://<hidden>@c.example/relay now"
    )
    # A wake URL may carry basic auth: accepted, never shown.
    assert relay_url_problem("https://u:p@c.example") is not None
    with pytest.raises(ConfigError) as info:
        GatewayConfig(relay_url="wss://c.example", wake_url="ftp://u:hunter2@w.example")
    assert "hunter2" not in str(info.value)


# --------------------------------------------------------------------------- plain text


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("ws://relay.example", True),
        ("http://10.0.0.5:8080", True),
        ("wss://relay.example", False),
        ("https://10.0.0.5", False),
        ("ws://127.0.0.1:8080", False),
        ("ws://127.8.9.10:8080", False),
        ("ws://localhost:8080", False),
        ("ws://[::1]:8080", False),
    ],
)
def test_plain_ws_to_a_host_that_is_not_loopback_is_a_warning(
    caplog: pytest.LogCaptureFixture, url: str, warned: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="relay_runtime.config"):
        assert warn_if_plain_text(GatewayConfig(relay_url=url)) is warned
    expected = [
        f"relay: the relay URL {url} is plain {url.split(':')[0]} to a host that is not "
        "loopback: the upgrade credential and every message cross the network unencrypted; "
        "use wss:// or https://"
    ]
    assert [r.getMessage() for r in caplog.records] == (expected if warned else [])


async def test_run_warns_about_plain_ws_after_its_checks(tmp_path: Path) -> None:
    """The real process: the WARNING comes with ``starting gateway``, once everything passed."""
    env = gateway_env(new_secret(), tmp_path / "state", GATEWAY_RELAY_HANDSHAKE_TIMEOUT_S="0.2")
    args = ["run", "--relay-url", "ws://192.0.2.1:9", "--trust", "open"]  # TEST-NET-1
    with trio.fail_after(GUARD_S):
        async with gateway_process(args, env) as gw:
            line = await gw.wait_line("is plain ws to a host that is not loopback")
            assert "level=WARNING" in line
            assert gw.saw("starting gateway")
            await gw.wait_line("next dial in")  # serving: the signal handler is in place
            gw.signal(signal.SIGTERM)
            assert await gw.wait_exit() == 0


# --------------------------------------------------------------------------- config files


def test_config_from_dev_zero_is_refused_unread(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(capsys, "--relay-url", "ws://127.0.0.1:9", "--config", "/dev/zero")
    assert status == 2
    assert one_error(err) == "/dev/zero: the config file is a device, pipe or socket, not a "\
        "regular file"  # fmt: skip


def test_config_from_a_fifo_does_not_hang(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    status, err = run(capsys, "--relay-url", "ws://127.0.0.1:9", "--config", str(fifo))
    assert status == 2
    assert one_error(err) == f"{fifo}: the config file is a device, pipe or socket, not a "\
        "regular file"  # fmt: skip


def test_an_oversized_config_file_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n", encoding="utf-8")
    status, err = run(capsys, "--relay-url", "ws://127.0.0.1:9", "--config", str(path))
    assert status == 2
    assert one_error(err) == (
        f"{path}: the config file is larger than {MAX_CONFIG_BYTES} bytes; refusing to read it"
    )


@pytest.mark.parametrize(
    "text",
    [
        "{a: " * 5000 + "1" + "}" * 5000,
        "[" * 5000 + "]" * 5000,
        "".join(f"{'  ' * i}a:\n" for i in range(MAX_CONFIG_DEPTH + 1)) + "  " * 65 + "b: 1\n",
    ],
    ids=["flow-mapping", "flow-list", "block"],
)
def test_deeply_nested_yaml_is_one_line_not_a_recursion_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str
) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text, encoding="utf-8")
    status, err = run(capsys, "--relay-url", "ws://127.0.0.1:9", "--config", str(path))
    assert status == 2
    assert one_error(err).startswith(
        f"{path}: the config file nests deeper than {MAX_CONFIG_DEPTH} levels at line "
    )


def test_nesting_up_to_the_limit_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("x: " + "[" * (MAX_CONFIG_DEPTH - 1) + "]" * (MAX_CONFIG_DEPTH - 1) + "\n")
    assert GatewayConfig.from_file(path).relay_url is None


def test_a_yaml_syntax_error_says_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("gateway: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_file(path)
    assert str(info.value) == (
        f"{path}: the config file is not valid YAML at line 2, column 1: "
        "expected ',' or ']', but got '<stream end>' (while parsing a flow sequence)"
    )


def test_dev_zero_as_a_subprocess_exits_at_once_with_bounded_memory(tmp_path: Path) -> None:
    """The issue's case end to end: today RSS grew by GB; now one line, exit 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_RELAY_", "RELAY_"))}
    env["HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "relay_runtime", "run", "--relay-url", "ws://127.0.0.1:9",
         "--config", "/dev/zero"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "relay-runtime: error: /dev/zero: the config file is a device, pipe or socket, not a "
        "regular file\n"
    )
    assert not (tmp_path / ".local").exists()  # a failing run creates no state dir


# --------------------------------------------------------------------------- unknown names


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "gateway:\n  relay_handshake_timout_s: 5\n",
            "gateway.relay_handshake_timout_s in {path}: is not a known config key; did you "
            "mean gateway.relay_handshake_timeout_s?",
        ),
        (
            "gateway:\n  realy_url: wss://c.example\n",
            "gateway.realy_url in {path}: is not a known config key; did you mean "
            "gateway.relay_url?",
        ),
        (
            "gateway:\n  idp:\n    client_secrte: x\n",
            "gateway.idp.client_secrte in {path}: is not a known config key; did you mean "
            "gateway.idp.client_secret?",
        ),
        (
            "relay_url: wss://c.example\n",
            "relay_url in {path}: is not a known config key; did you mean gateway.relay_url?",
        ),
        (
            "gatway:\n  relay_url: wss://c.example\n",
            "gatway in {path}: is not a known config key; did you mean gateway?",
        ),
        (
            "platforms:\n  relay:\n    extra:\n      relay_ulr: wss://c.example\n",
            "platforms.relay.extra.relay_ulr in {path}: is not a known config key; did you mean "
            "platforms.relay.extra.relay_url?",
        ),
        ("gateway: 5\n", "gateway in {path}: must be a mapping"),
    ],
)
def test_unknown_config_keys_are_errors_naming_the_closest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, yaml_text: str, message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    status, err = run(capsys, "--relay-url", "ws://127.0.0.1:9", "--config", str(path))
    assert status == 2
    assert one_error(err) == message.format(path=path)


def test_keys_of_the_host_application_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "model: gpt\ntoolsets: [web]\ngateway:\n  relay_url: wss://c.example\n  reply_mode: x\n"
        "  platforms:\n    discord: {require_mention: true}\n"
        "platforms:\n  relay:\n    enabled: true\n    home_channel: c1\n  telegram: {}\n"
        "discord:\n  require_mention: true\n",
        encoding="utf-8",
    )
    assert GatewayConfig.from_file(path).relay_url == "wss://c.example"


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        (
            "GATEWAY_RELAY_HANDSHAKE_TIMOUT_S",
            "is not a known GATEWAY_RELAY_* variable; did you mean "
            "GATEWAY_RELAY_HANDSHAKE_TIMEOUT_S?",
        ),
        ("GATEWAY_RELAY_NONSENSE", "is not a known GATEWAY_RELAY_* variable (see "
         "docs/configuration.md)"),
        ("RELAY_STATEDIR", "is not a known variable; did you mean RELAY_STATE_DIR?"),
        ("RELAY_TURST", "is not a known variable; did you mean RELAY_TRUST?"),
        ("RELAY_URL", "is not a known variable; did you mean GATEWAY_RELAY_URL?"),
        ("RELAY_SECRET", "is not a known variable; did you mean GATEWAY_RELAY_SECRET?"),
    ],
)  # fmt: skip
def test_unknown_variables_that_look_like_ours_are_errors(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, "1")
    status, err = run(capsys, "--relay-url", "ws://127.0.0.1:9")
    assert status == 2
    assert one_error(err) == f"{variable}: {message}"


def test_relay_variables_read_by_other_parts_are_never_refused(tmp_path: Path) -> None:
    """Every RELAY_* name the project reads elsewhere (grep of the repository), and
    the families the agent, the trust engine, the connector and the harnesses own."""
    environ = dict.fromkeys(
        (
            "RELAY_TEST_PG_DSN",
            "RELAY_REQUIRE_PG",
            "RELAY_CHAOS_SEED",
            "RELAY_FUZZ_LONG",
            "RELAY_AGENT_MODEL",
            "RELAY_AGENT_API_KEY",
            "RELAY_AGENT_BASE_URL",
            "RELAY_AGENT_HISTORY",
            "RELAY_AGENT_SYSTEM_PROMPT",
            "RELAY_AGENT_TIMEOUT_S",
            "RELAY_TRUST_DSN",
            "RELAY_TRUST_BOOTSTRAP_ADMINS",
            "RELAY_TRUST_CASEFOLD_PLATFORMS",
            "RELAY_TRUST_LLM_API_KEY",
            "RELAY_TRUST_INVITE_FAILURES_PER_HOUR",
            "RELAY_CONNECTOR_ADMIN_TOKEN",
            "RELAY_CONNECTOR_URL",
            "RELAY_ALLOW_BOTS",
            "RELAY_SOMETHING_ELSE_ENTIRELY",
        ),
        "x",
    )
    environ |= {"RELAY_TRUST": "open", "RELAY_STATE_DIR": str(tmp_path / "s")}
    assert GatewayConfig.load(environ=environ).trust == "open"


def test_unknown_keys_in_relay_env_are_errors(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir(mode=0o700)
    env_file = state / "relay.env"
    env_file.write_text("GATEWAY_RELAY_ID=gw\nGATEWAY_RELAY_SECERT=x\n", encoding="utf-8")
    env_file.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        GatewayConfig.load(environ={"RELAY_STATE_DIR": str(state)})
    assert str(info.value) == (
        f"GATEWAY_RELAY_SECERT in {env_file}: is not a known relay.env setting; did you mean "
        "GATEWAY_RELAY_SECRET?"
    )


# --------------------------------------------------------------------------- token TTL


def test_token_ttl_s_is_the_lifetime_of_minted_tokens() -> None:
    """token_ttl_s is wired: the supervisor's factory and the policy call mint with it."""
    import base64

    from relay_runtime._control import upgrade_token_factory

    config = GatewayConfig(relay_url="wss://c.example", token_ttl_s=42)
    token = upgrade_token_factory(config, wall_clock=lambda: 1_750_000_000.0)("gw", "s" * 32)
    payload, exp, _sig = base64.urlsafe_b64decode(token + "==").decode().split(":")
    assert (payload, int(exp)) == ("gw", 1_750_000_042)
