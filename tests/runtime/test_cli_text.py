"""What the command line says (issue 16): help for everything, one line per error.

Every error a user can cause ends as one ``relay-runtime: error: <message>`` line on
stderr with the documented exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from relay_runtime import logs
from relay_runtime.cli import (
    EXIT_DISABLED,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    build_parser,
    main,
)
from relay_runtime.config import ConfigError, GatewayConfig
from relay_runtime.errors import RelayDisabled
from relay_runtime.gateway import run_gateway

PREFIX = "relay-runtime: error: "


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(__import__("os").environ):
        if name.startswith(("GATEWAY_RELAY_", "RELAY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logs._RelayHandler)]:
        root.removeHandler(handler)
    logging.captureWarnings(False)


def one_error_line(err: str) -> str:
    """The single stderr line of a failed command (asserting there is no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), err
    return lines[0].removeprefix(PREFIX)


# ---- help for everything -------------------------------------------------------------------


def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, f"{path} {name}")


def parsers(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}")


def test_every_option_and_positional_of_every_subcommand_has_help() -> None:
    parser = build_parser()
    missing = [
        f"{path}: {action.option_strings or action.dest}"
        for path, action in walk(parser, "relay-runtime")
        if not (action.help or "").strip() and action.help != argparse.SUPPRESS
    ]
    assert missing == []
    # Each subcommand's choices carry a one-line help too (what `--help` lists).
    for path, action in walk(parser, "relay-runtime"):
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest for choice in action._choices_actions}
            assert listed == set(action.choices), f"{path}: {set(action.choices) - listed}"
            assert all((choice.help or "").strip() for choice in action._choices_actions), path


def test_every_subcommand_has_a_description_without_markup() -> None:
    for path, parser in parsers(build_parser(), "relay-runtime"):
        assert (parser.description or "").strip(), f"{path} has no description"
        text = parser.format_help()
        assert "``" not in text, f"{path}: RST markup in its help"
        assert "§" not in text, f"{path}: a spec section reference in its help"


def test_trust_help_reads_as_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["trust", "--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "TR §" not in out
    assert "local operator" in out and "exit status" in out


def test_run_help_says_what_happens_on_refused_and_revoked_credentials(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--exit-on-refused" in out
    assert "an ERROR after 3 refusals in a row naming the gateway id" in out
    assert "retried for ever, or exit 3 with --exit-on-refused" in out
    assert "credentials revoked" in out


# ---- one line per error --------------------------------------------------------------------


def test_a_missing_optional_dependency_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails
    for name in [m for m in sys.modules if m.startswith("trust.store.postgres")]:
        monkeypatch.delitem(sys.modules, name)
    status = main(["trust", "list", "--dsn", "postgresql://postgres@127.0.0.1:5432/test"])
    assert status == EXIT_FAILURE
    assert one_error_line(capsys.readouterr().err) == (
        "PostgreSQL support needs the postgres extra: pip install 'relay-runtime[postgres]'"
    )


@pytest.mark.parametrize(
    ("raised", "status", "line"),
    [
        (ExceptionGroup("n", [ExceptionGroup("m", [ConfigError("relay_url", "is bad")])]), 2, None),
        (ExceptionGroup("n", [RelayDisabled()]), EXIT_DISABLED, "relay disabled"),
        (RuntimeError("boom\nsecond line"), EXIT_FAILURE, "RuntimeError: boom second line"),
        (PermissionError(13, "Permission denied", "/x/y"), EXIT_FAILURE, "Permission denied"),
    ],
)
def test_anything_a_command_raises_is_one_line_with_its_status(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    raised: BaseException,
    status: int,
    line: str | None,
) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise raised

    monkeypatch.setattr("relay_runtime.cli.demo.demo_command", fail)  # registered as func
    assert main(["demo"]) == status
    text = one_error_line(capsys.readouterr().err)
    assert line is None or text.startswith(line), text


def test_ctrl_c_in_a_command_without_a_drain_is_130_and_silent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("trust.cli._list", interrupted)
    assert main(["trust", "list"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == ""


def test_error_prefixes_are_one_style_across_subcommands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trust", "show", "nocolon"]) == EXIT_USAGE  # an invalid client id: usage
    assert "invalid client id" in one_error_line(capsys.readouterr().err)
    bad = tmp_path / "bad.md"
    bad.write_text("---\nname: x\n  bad: [\n---\nbody\n", encoding="utf-8")
    assert main(["trust", "policy", "check", str(bad)]) == EXIT_USAGE
    assert "invalid YAML" in one_error_line(capsys.readouterr().err)
    assert main(["provision"]) == EXIT_USAGE
    assert "GATEWAY_RELAY_URL" in one_error_line(capsys.readouterr().err)
    assert main(["enroll", "--connector-url", "ws://127.0.0.1:9"]) == EXIT_USAGE
    assert "enrollment token" in one_error_line(capsys.readouterr().err)
    assert main(["run", "--relay-url", "ftp://x"]) == EXIT_USAGE
    assert one_error_line(capsys.readouterr().err).startswith("--relay-url: ")


def test_a_yaml_error_says_what_is_wrong_and_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gateway:\n  relay_url: ws://x\n   bad: 1\n", encoding="utf-8")
    assert main(["run", "--config", str(config)]) == EXIT_USAGE
    assert one_error_line(capsys.readouterr().err) == (
        f"{config}: the config file is not valid YAML at line 3, column 7: "
        "mapping values are not allowed here"
    )


def test_policy_show_without_a_policy_says_what_to_configure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["policy", "--show"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("relay: nothing to declare: ")
    assert "GATEWAY_RELAY_PLATFORM" in out and "require_mention" in out
    monkeypatch.setenv("GATEWAY_RELAY_PLATFORM", "discord")
    assert main(["policy", "--show"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("discord: nothing to declare (the connector's defaults apply)")
    assert "DISCORD_ALLOW_BOTS" in out


def test_invite_expiry_is_iso_8601_utc(capsys: pytest.CaptureFixture[str]) -> None:
    before = datetime.datetime.now(datetime.UTC)
    assert main(["trust", "invite", "create", "--expires", "12h"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"expires at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\.", out)
    assert found is not None, out
    at = datetime.datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC
    )
    assert datetime.timedelta(hours=11) < at - before < datetime.timedelta(hours=13)
    assert main(["trust", "invite", "list"]) == 0
    assert f"expires {found.group(1)} " in capsys.readouterr().out
    assert main(["trust", "invite", "create", "--expires", "never", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["expires"] == "never"


# ---- run_gateway's boundary ----------------------------------------------------------------


async def test_run_gateway_raises_a_config_error_as_itself(tmp_path: Path) -> None:
    async def agent(turn: object) -> None:
        return None

    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    for config in (
        GatewayConfig(),  # no relay_url
        GatewayConfig(relay_url="ws://127.0.0.1:9", state_dir=blocker, trust="open"),
        GatewayConfig(relay_url="ws://127.0.0.1:9", state_dir=tmp_path, trust="nope.md"),
    ):
        with trio.fail_after(10):
            try:
                await run_gateway(config, agent)
            except ConfigError:
                continue
            except BaseExceptionGroup as group:
                pytest.fail(f"run_gateway raised an exception group: {group!r}")
        pytest.fail(f"no ConfigError for {config!r}")


def test_trust_usage_errors_name_the_levels_trust_help_names() -> None:
    from trust.commands import parse_command
    from trust.ops import HELP

    for op, levels in (("promote", "contact|whitelist"), ("demote", "contact|stranger")):
        assert f"/trust {op} ID {levels}" in HELP
        command = parse_command(f"/trust {op} telegram:1")
        assert command is not None and command.usage == f"usage: /trust {op} ID {levels}"
        general = parse_command("/trust frobnicate")
        assert general is not None and f"{op} ID {levels}" in (general.usage or "")
