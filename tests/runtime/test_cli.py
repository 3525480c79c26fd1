"""The command line in-process: registration, help, exit codes (AR §4)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relay_runtime import RelayDisabled
from relay_runtime._cli import (
    EXIT_DISABLED,
    EXIT_FAILURE,
    EXIT_USAGE,
    UsageError,
    build_parser,
    exit_status_for,
    main,
)
from relay_runtime._cli.run import load_agent
from relay_runtime._logs import reset_logging
from relay_runtime.config import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(__import__("os").environ):
        if name.startswith(("GATEWAY_RELAY_", "RELAY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_STATE_DIR", str(tmp_path / "state"))
    yield
    reset_logging()


def test_help_lists_the_commands_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "demo"):
        assert f"    {command} " in out
    assert "examples:" in out
    assert "--log-format" in out and "--log-level" in out
    assert "3 relay disabled" in out


def test_a_broken_optional_command_module_is_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import relay_runtime._cli as cli

    (tmp_path / "half_written_cli.py").write_text("raise RuntimeError('half-written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = (
        *cli.COMMAND_MODULES,
        ("relay_runtime.no_such_cli", ("ghost",)),
        ("half_written_cli", ("broken",)),
    )
    help_text = build_parser(command_modules=modules).format_help()
    assert "ghost" not in help_text and "broken" not in help_text
    assert "    run " in help_text
    err = capsys.readouterr().err
    assert "commands of half_written_cli are unavailable (RuntimeError: half-written)" in err
    assert "no_such_cli" not in err  # simply not installed: no warning


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert "usage: relay-runtime" in capsys.readouterr().err


def test_unknown_option_is_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--no-such-option"])
    assert exc.value.code == EXIT_USAGE


def test_run_options_parse() -> None:
    args = build_parser().parse_args(
        ["--log-format", "json", "--log-level", "DEBUG", "run", "--relay-url", "ws://h",
         "--agent", "m:a", "--trust", "strict", "--config", "c.yaml", "--state-dir", "d"]
    )  # fmt: skip
    assert (args.log_format, args.log_level) == ("json", "debug")
    assert (args.relay_url, args.agent, args.trust, args.config, args.state_dir) == (
        "ws://h",
        "m:a",
        "strict",
        "c.yaml",
        "d",
    )
    defaults = build_parser().parse_args(["run"])
    assert defaults.agent == "relay_runtime.agents:echo"
    assert defaults.trust is None  # careful, unless RELAY_TRUST says otherwise


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["run"], {}, "GATEWAY_RELAY_URL"),
        (["run", "--relay-url", "ftp://x"], {}, "--relay-url"),
        (["run", "--relay-url", "ws://h"], {"GATEWAY_RELAY_MAX_FRAME_BYTES": "5"}, "GATEWAY_RELAY_MAX_FRAME_BYTES"),
        (["run", "--relay-url", "ws://h"], {"GATEWAY_RELAY_SECRET": "x" * 40}, "GATEWAY_RELAY_SECRET"),
        (["run", "--relay-url", "ws://h", "--trust", "lenient"], {}, "--trust"),
        (["run", "--relay-url", "ws://h"], {"RELAY_TRUST": "lenient"}, "RELAY_TRUST"),
        (["run", "--relay-url", "ws://h", "--agent", "no_such_module:agent"], {}, "--agent"),
        (["run", "--relay-url", "ws://h", "--agent", "relay_runtime.agents:nope"], {}, "--agent"),
        (["run", "--relay-url", "ws://h", "--agent", "relay_runtime.agents"], {}, "--agent"),
        (["run", "--relay-url", "ws://h", "--agent", "relay_runtime.agents:openai_chat"], {}, "RELAY_AGENT_MODEL"),
        (["run", "--relay-url", "ws://h", "--agent", "relay_runtime.agents:openai_chat"],
         {"RELAY_AGENT_MODEL": "m", "RELAY_AGENT_BASE_URL": "ftp://x"}, "RELAY_AGENT_BASE_URL"),
        (["run", "--relay-url", "ws://h", "--config", "/nonexistent.yaml"], {}, "/nonexistent.yaml"),
    ],
)  # fmt: skip
def test_R86_bad_configuration_is_exit_2_naming_the_culprit(
    argv: list[str],
    env: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("relay-runtime: error: ")
    assert named in err


def test_a_policy_file_with_errors_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "mine.md"
    policy.write_text("---\nname: mine\nfast_rules: 7\n---\nbody\n", encoding="utf-8")
    assert main(["run", "--relay-url", "ws://h", "--trust", str(policy)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--trust" in err and "fast_rules" in err


def test_a_bad_policy_in_the_config_file_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gateway:\n  relay_trust: very-careful\n", encoding="utf-8")
    assert main(["run", "--relay-url", "ws://h", "--config", str(config)]) == EXIT_USAGE
    assert f"gateway.relay_trust in {config}" in capsys.readouterr().err


def test_R55_relay_disabled_maps_to_exit_3_even_inside_a_group() -> None:
    assert exit_status_for(RelayDisabled()) == EXIT_DISABLED
    group = ExceptionGroup("nursery", [ExceptionGroup("inner", [RelayDisabled()])])
    assert exit_status_for(group) == EXIT_DISABLED
    assert exit_status_for(ExceptionGroup("x", [ConfigError("a", "b")])) == EXIT_USAGE
    assert exit_status_for(UsageError("x")) == EXIT_USAGE
    assert exit_status_for(RuntimeError("boom")) == EXIT_FAILURE


def test_load_agent_returns_the_named_callable() -> None:
    from relay_runtime.agents import echo

    assert load_agent("relay_runtime.agents:echo") is echo
    assert load_agent("relay_runtime.agents._echo:echo") is echo
    with pytest.raises(UsageError, match="not callable"):
        load_agent("relay_runtime.agents._openai_chat:DEFAULT_BASE_URL")
