"""Issue 12's connector items: secrets off the command line, no open bind, bounded tokens.

Bad input gives one line naming it and exit 2 (real ``relay-runtime connector`` processes);
attacks on a real loopback socket are refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

from protocol import DescriptorFrame, make_token
from relay_runtime._cli.connector import is_loopback, parse_credentials, read_secret_file
from relay_runtime.connector import ReferenceConnector
from relay_runtime.connector._control_plane import ControlPlaneRegistry

from .peer import GATEWAY, SECRET, bearer, dial, good_headers

LIMIT = 20
PREFIX = "relay-runtime: error: "


def connector_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``relay-runtime connector ARGS`` to completion (only for commands that exit)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_RELAY_", "RELAY_"))}
    return subprocess.run(
        [sys.executable, "-m", "relay_runtime", "connector", *args],
        capture_output=True,
        text=True,
        env=base | (env or {}),
        timeout=LIMIT,
        check=False,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(PREFIX), lines[0]
    return lines[0][len(PREFIX) :]


# -- secrets off the command line -------------------------------------------------------------


def test_secret_file_gives_a_rotation_list_and_secret_env_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "gw.secret"
    path.write_text("primary\n\n  secondary  \n")
    path.chmod(0o600)
    items = [
        ("gateway_id", "gw-a"),
        ("secret_file", str(path)),
        ("gateway_id", "gw-b"),
        ("secret_env", "B_SECRET"),
    ]
    got = parse_credentials(items, {"B_SECRET": " sb \n"})
    assert got == {"gw-a": ["primary", "secondary"], "gw-b": ["sb"]}


def test_a_world_readable_secret_file_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gw.secret"
    path.write_text("s\n")
    path.chmod(0o644)
    assert read_secret_file(str(path), "--secret-file") == ["s"]
    assert f"chmod 600 {path}" in caplog.text


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p / "missing", "--secret-file {p}/missing: No such file or directory"),
        (lambda p: p, "--secret-file {p}: Is a directory"),
        (lambda p: Path("/dev/zero"), "--secret-file /dev/zero: not a regular file"),
        (lambda p: _write(p / "empty", b"\n \n"), "--secret-file {p}/empty: the file is empty"),
        (lambda p: _write(p / "bin", b"\xff\xfe"), "--secret-file {p}/bin: not UTF-8 text"),
        (
            lambda p: _write(p / "big", b"x" * 70_000),
            "--secret-file {p}/big: larger than 65536 bytes",
        ),
    ],
)
def test_a_bad_secret_file_is_one_line_and_exit_2(tmp_path: Path, make, problem) -> None:
    path = make(tmp_path)
    done = connector_cli("--gateway-id", "gw", "--secret-file", str(path))
    assert done.returncode == 2
    assert one_error_line(done) == problem.format(p=tmp_path)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_a_secret_env_naming_an_unset_variable_is_exit_2() -> None:
    done = connector_cli("--gateway-id", "gw", "--secret-env", "NOPE_NOT_SET")
    assert done.returncode == 2
    assert one_error_line(done) == "--secret-env NOPE_NOT_SET: the variable is not set or empty"


def test_a_secret_option_before_a_gateway_id_is_exit_2(tmp_path: Path) -> None:
    done = connector_cli("--secret-env", "X", "--gateway-id", "gw")
    assert done.returncode == 2
    assert one_error_line(done) == "--secret-env must follow a --gateway-id"


async def test_secret_on_the_command_line_still_works_but_is_warned_about() -> None:
    command = [sys.executable, "-m", "relay_runtime", "connector"]
    command += ["--gateway-id", GATEWAY, "--secret", SECRET]
    with trio.fail_after(LIMIT):
        proc = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        url = b""
        while not url.endswith(b"\n"):
            url += await proc.stdout.receive_some(1)
        async with dial(url.decode().strip(), good_headers()) as peer:
            await peer.hello("relay")
            await peer.expect(DescriptorFrame)
        proc.terminate()
        assert await proc.wait() == 0
        err = b""
        while chunk := await proc.stderr.receive_some(65536):
            err += chunk
    warning = "--secret puts the secret on the command line, visible to every user in ps"
    assert warning in err.decode()
    assert SECRET not in err.decode()


# -- binds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.org", ""])
def test_allow_unauthenticated_on_a_non_loopback_bind_is_refused(host: str) -> None:
    done = connector_cli("--host", host, "--allow-unauthenticated")
    assert done.returncode == 2
    assert one_error_line(done) == (
        f"--allow-unauthenticated with --host {host!r}: anyone who can reach it could act as "
        "a gateway; use --host 127.0.0.1 or give gateways secrets"
    )


def test_loopback_is_recognised() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "", "loopback.example"))


def test_admin_routes_on_a_non_loopback_control_host_are_refused() -> None:
    done = connector_cli(
        "--allow-unauthenticated",
        "--control-host",
        "0.0.0.0",
        env={"RELAY_CONNECTOR_ADMIN_TOKEN": "adm"},
    )
    assert done.returncode == 2
    assert one_error_line(done) == (
        "admin routes on --control-host '0.0.0.0' would be reachable from the network; "
        "use 127.0.0.1 or pass --allow-remote-admin"
    )


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--max-token-lifetime", "0"], "--max-token-lifetime must be a number of seconds > 0, not 0.0"),
        (["--max-token-lifetime", "nan"], "--max-token-lifetime must be a number of seconds > 0, not nan"),
        (["--port", "70000"], "--port must be 0-65535, not 70000"),
        (["--control-port", "-1"], "--control-port must be 0-65535, not -1"),
    ],
)  # fmt: skip
def test_bad_numbers_are_one_line_and_exit_2(args: list[str], problem: str) -> None:
    done = connector_cli("--allow-unauthenticated", *args)
    assert done.returncode == 2
    assert one_error_line(done) == problem


# -- token lifetime on a real socket ----------------------------------------------------------


async def _refused(connector: ReferenceConnector, token: str) -> int:
    with pytest.raises(ConnectionRejected) as refused:
        async with dial(connector.url, bearer(token)):
            pass
    return refused.value.status_code


@pytest.mark.parametrize("ttl", [0, 30 * 365 * 86400])
async def test_upgrade_tokens_without_expiry_or_living_30_years_are_refused(nursery, ttl) -> None:
    connector = ReferenceConnector(secrets={GATEWAY: SECRET})
    await nursery.start(connector.serve)
    with trio.fail_after(LIMIT):
        assert await _refused(connector, make_token(GATEWAY, SECRET, ttl)) == 401
    reason = "no_expiry" if ttl == 0 else "lifetime"
    assert [(r.gateway_id, r.reason) for r in connector.rejections] == [(GATEWAY, reason)]


async def test_legacy_tokens_are_accepted_when_asked_for(nursery) -> None:
    connector = ReferenceConnector(secrets={GATEWAY: SECRET}, max_token_lifetime_s=None)
    await nursery.start(connector.serve)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, bearer(make_token(GATEWAY, SECRET, 0))) as peer:
            await peer.hello("relay")
            await peer.expect(DescriptorFrame)


async def test_a_configurable_maximum_lifetime(nursery) -> None:
    connector = ReferenceConnector(secrets={GATEWAY: SECRET}, max_token_lifetime_s=60)
    await nursery.start(connector.serve)
    with trio.fail_after(LIMIT):
        assert await _refused(connector, make_token(GATEWAY, SECRET, 300)) == 401
        async with dial(connector.url, bearer(make_token(GATEWAY, SECRET, 30))) as peer:
            await peer.hello("relay")
            await peer.expect(DescriptorFrame)


def test_a_non_positive_maximum_lifetime_is_refused() -> None:
    with pytest.raises(ValueError, match="max_token_lifetime_s must be > 0, not 0"):
        ReferenceConnector(max_token_lifetime_s=0)


# -- revocation through the control plane closes the live socket ------------------------------


async def test_registry_revoke_closes_the_live_socket_4401(nursery) -> None:
    registry = ControlPlaneRegistry()
    registry.pin_gateway(GATEWAY, SECRET)
    connector = ReferenceConnector(registry=registry)
    await nursery.start(connector.serve)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await peer.hello("relay")
            await peer.expect(DescriptorFrame)
            await connector.wait_connected(GATEWAY)
            registry.revoke(GATEWAY)
            with pytest.raises(ConnectionClosed) as closed:
                await peer.next()
        assert closed.value.reason is not None
        assert (closed.value.reason.code, closed.value.reason.reason) == (4401, "unauthorized")
        assert await _refused(connector, make_token(GATEWAY, SECRET, 300)) == 401
