"""What the command line says (issue 16): help for everything, one line per error.

Every error a user can cause ends as one ``relay-runtime: error: <message>`` line on
stderr with the documented exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from relay_runtime import RelayDisabled, run_gateway
from relay_runtime._cli import (
    EXIT_DISABLED,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    build_parser,
    main,
)
from relay_runtime._logs import reset_logging
from relay_runtime.config import ConfigError, GatewayConfig
from trust._ops import TrustOps

PREFIX = "relay-runtime: error: "


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(__import__("os").environ):
        if name.startswith(("GATEWAY_RELAY_", "RELAY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    yield
    reset_logging()


def one_error_line(err: str) -> str:
    """The single stderr line of a failed command (asserting there is no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), err
    return lines[0].removeprefix(PREFIX)


# ---- help for everything -------------------------------------------------------------------


# The help is read as a user sees it (``--help``), the subcommands from the usage error
# that lists them: argparse keeps its parsers' actions in private attributes.
SECTIONS = ("positional arguments:", "options:")
NOT_A_COMMAND = "no-such-subcommand"


def help_text(*path: str) -> str:
    """What ``relay-runtime PATH --help`` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*path, "--help"])
    return out.getvalue()


@functools.cache
def subcommands(*path: str) -> tuple[str, ...]:
    """The subcommands of ``relay-runtime PATH``, as its "invalid choice" error lists them."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        build_parser().parse_args([*path, NOT_A_COMMAND])
    found = re.search(r"invalid choice: .*\(choose from (.*)\)$", err.getvalue(), re.MULTILINE)
    if found is None:
        return ()
    names = [name.strip().strip("'") for name in found.group(1).split(",")]
    # A positional with choices is not a subcommand: a subcommand's usage names it.
    prog = " ".join(["usage: relay-runtime", *path])
    return tuple(name for name in names if help_text(*path, name).startswith(f"{prog} {name} "))


def walk(*path: str) -> Iterator[tuple[str, str]]:
    """``(command line, --help text)`` of ``relay-runtime PATH`` and every subcommand below."""
    yield " ".join(["relay-runtime", *path]), help_text(*path)
    for name in subcommands(*path):
        yield from walk(*path, name)


def listed(text: str) -> list[tuple[int, str, str]]:
    """``(indent, invocation, help)`` of each argument (indent 2) and subcommand (indent 4)
    a ``--help`` text lists; the help is empty where the entry has none."""
    lines = text.splitlines()
    entries: list[tuple[int, str, str]] = []
    in_section = False
    for i, line in enumerate(lines):
        if not line.startswith(" "):  # a heading or the blank line after a section
            in_section = line in SECTIONS
            continue
        indent = len(line) - len(line.lstrip())
        if not in_section or indent not in (2, 4):  # else a wrapped help line
            continue
        invocation, _, said = line.strip().partition("  ")
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if not said.strip() and len(following) - len(following.lstrip()) > 4:
            said = following  # the help starts on the next line
        entries.append((indent, invocation, said.strip()))
    return entries


def description(text: str) -> str:
    """The paragraph between a ``--help`` text's usage and its first section, if any."""
    paragraphs = text.split("\n\n")
    return "" if paragraphs[1].startswith(SECTIONS) else paragraphs[1].strip()


def test_help_walk_sees_every_subcommand() -> None:
    commands = [line for line, _ in walk()]
    assert {"relay-runtime trust invite create", "relay-runtime connector"} <= set(commands)
    assert len(commands) == len(set(commands)) > 20


def test_every_option_and_positional_of_every_subcommand_has_help() -> None:
    missing = []
    for line, text in walk():
        entries = listed(text)
        assert entries, line
        missing += [f"{line}: {invocation}" for _, invocation, said in entries if not said]
        # Each subcommand's choices carry a one-line help too (what `--help` lists).
        choices = {invocation for indent, invocation, _ in entries if indent == 4}
        names = set(subcommands(*line.split()[1:]))
        assert choices == names, f"{line}: {names - choices}"
    assert missing == []


def test_every_subcommand_has_a_description_without_markup() -> None:
    for line, text in walk():
        assert description(text), f"{line} has no description"
        assert "``" not in text, f"{line}: RST markup in its help"
        assert "§" not in text, f"{line}: a spec section reference in its help"


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
    for name in [m for m in sys.modules if m.startswith("trust._store.postgres")]:
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

    monkeypatch.setattr("relay_runtime._cli.demo.demo_command", fail)  # registered as func
    assert main(["demo"]) == status
    text = one_error_line(capsys.readouterr().err)
    assert line is None or text.startswith(line), text


def test_ctrl_c_in_a_command_without_a_drain_is_130_and_silent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(TrustOps, "list_clients", interrupted)
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
    from trust._commands import parse_command
    from trust._ops import HELP

    for op, levels in (("promote", "contact|whitelist"), ("demote", "contact|stranger")):
        assert f"/trust {op} ID {levels}" in HELP
        command = parse_command(f"/trust {op} telegram:1")
        assert command is not None and command.usage == f"usage: /trust {op} ID {levels}"
        general = parse_command("/trust frobnicate")
        assert general is not None and f"{op} ID {levels}" in (general.usage or "")
