"""Issue 12, the state directory treated like ``~/.ssh`` (relay_runtime/_statedir.py).

Each refusal goes through the real ``relay-runtime run`` (in process via :func:`main`, or as
a child process where the guarantee is about the process), and must be exactly one line,
exit status 2, before ``starting gateway`` is logged and before anything is created.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from relay_runtime._cli import main
from relay_runtime._statedir import StateDirError, check_state_dir, used_before
from relay_runtime.connector import ReferenceConnector
from tests.e2e.conftest import GATEWAY_ID, GUARD_S, gateway_env, gateway_process, new_secret

PREFIX = "relay-runtime: error: "
FOREIGN_UID = 65534  # nobody


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("GATEWAY_RELAY_", "RELAY_", "XDG_")) or name.endswith("_ALLOW_BOTS"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def make_db(path: Path) -> None:
    """A relay.db as a gateway leaves it: WAL mode, the relay_ and trust_ tables, data."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE relay_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO relay_schema VALUES (1)")
        conn.execute("CREATE TABLE trust_meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("CREATE TABLE trust_clients (id TEXT PRIMARY KEY, level TEXT)")
        conn.executemany(
            "INSERT INTO trust_clients VALUES (?, ?)", [(f"c{i}", "x" * 200) for i in range(400)]
        )
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory that has been used: relay.db with our tables, the lock file."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    make_db(path / "relay.db")
    os.chmod(path / "relay.db", 0o600)
    (path / "relay.db.lock").touch(mode=0o600)
    return path


def run(capsys: pytest.CaptureFixture[str], state: Path, *extra: str) -> tuple[int, str]:
    status = main(["run", "--relay-url", "ws://127.0.0.1:9", "--state-dir", str(state), *extra])
    return status, capsys.readouterr().err


def one_error(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err  # in particular, no "starting gateway" before it
    assert lines[0].startswith(PREFIX), err
    return lines[0][len(PREFIX) :]


def make_foreign(path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make ``path`` owned by someone else; returns the name the fix should chown to."""
    import pwd

    if os.geteuid() == 0:
        os.chown(path, FOREIGN_UID, -1)
        return pwd.getpwuid(0).pw_name
    # Not root: we cannot give a file away, so be someone else instead.
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    try:
        return pwd.getpwuid(me + 1).pw_name
    except KeyError:
        return str(me + 1)


# --------------------------------------------------------------------------- permissions


def test_a_world_writable_state_dir_is_refused_with_the_chmod(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    state.chmod(0o777)
    status, err = run(capsys, state)
    assert status == 2
    assert one_error(err) == (
        f"{state}: the state directory is writable by group or others (mode 0777); "
        f"fix: chmod 700 {state}"
    )


def test_a_planted_relay_env_in_a_shared_state_dir_is_never_read(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    """The issue's attack: trust switched to open and the URL redirected by a planted file."""
    state.chmod(0o1777)  # like /tmp: anyone may add files
    planted = state / "relay.env"
    planted.write_text("RELAY_TRUST=open\nGATEWAY_RELAY_URL=ws://attacker.example\n")
    planted.chmod(0o600)
    status, err = run(capsys, state)
    assert status == 2
    assert "writable by group or others" in one_error(err)
    assert "attacker" not in err


def test_a_relay_env_others_can_read_is_refused(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    env_file = state / "relay.env"
    env_file.write_text("GATEWAY_RELAY_ID=gw-1\n")
    env_file.chmod(0o640)
    status, err = run(capsys, state)
    assert status == 2
    assert one_error(err) == (
        f"{env_file}: relay.env (credentials) is readable or writable by group or others "
        f"(mode 0640); fix: chmod 600 {env_file}"
    )


def test_a_foreign_owned_relay_env_is_refused_with_the_chown(
    capsys: pytest.CaptureFixture[str], state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = state / "relay.env"
    env_file.write_text("GATEWAY_RELAY_URL=ws://attacker.example\n")
    env_file.chmod(0o600)
    me = make_foreign(env_file, monkeypatch)
    owner = "nobody" if os.geteuid() == 0 else None
    status, err = run(capsys, state)
    assert status == 2
    message = one_error(err)
    assert message.startswith(f"{env_file}: relay.env (credentials) is owned by ")
    if owner is not None:
        assert f"owned by {owner}, " in message
    assert message.endswith(
        f"if you did not put it there, remove it; otherwise fix: sudo chown {me} {env_file}"
    )


@pytest.mark.parametrize("name", ["relay.db", "relay.db-wal", "relay.db.lock"])
def test_group_writable_database_files_are_refused(
    capsys: pytest.CaptureFixture[str], state: Path, name: str
) -> None:
    path = state / name
    path.touch()
    path.chmod(0o660)
    status, err = run(capsys, state)
    assert status == 2
    assert one_error(err) == (
        f"{path}: {name} is writable by group or others (mode 0660); fix: chmod 600 {path}"
    )


def test_a_foreign_owned_database_is_refused(
    capsys: pytest.CaptureFixture[str], state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = state / "relay.db"
    if os.geteuid() != 0:
        # As another user our own directory is foreign first; give it to "us" by skipping
        # the directory check is not possible, so only the root path is run here.
        me = make_foreign(state, monkeypatch)
        status, err = run(capsys, state)
        assert status == 2
        assert f"sudo chown {me} {state}" in one_error(err)
        return
    me = make_foreign(db, monkeypatch)
    status, err = run(capsys, state)
    assert status == 2
    assert one_error(err) == (
        f"{db}: relay.db is owned by nobody, not by {me}: if you did not put it there, remove "
        f"it; otherwise fix: sudo chown {me} {db}"
    )


# --------------------------------------------------------------------------- integrity


def damaged_line(db: Path, reason: str) -> str:
    recovered = db.with_name("relay.recovered.db")
    return (
        f"{db}: the state database is damaged ({reason}). Stop and restore it from a backup "
        "(docs/operations.md, Backups); with no backup, keep the trust tables by salvaging "
        f"what can be read: sqlite3 {db} .recover | sqlite3 {recovered}, then move "
        "relay.recovered.db to relay.db (remove relay.db-wal and relay.db-shm); to start "
        "empty instead, move relay.db away and run with --fresh-state"
    )


def test_a_truncated_relay_db_is_one_line_naming_file_and_remedy(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    db = state / "relay.db"
    data = db.read_bytes()
    assert len(data) > 20_000
    db.write_bytes(data[: len(data) // 3])
    status, err = run(capsys, state)
    assert status == 2
    assert one_error(err) == damaged_line(db, "database disk image is malformed")


def test_a_relay_db_of_garbage_is_one_line(capsys: pytest.CaptureFixture[str], state: Path) -> None:
    db = state / "relay.db"
    db.write_bytes(bytes(range(256)) * 64)
    status, err = run(capsys, state)
    assert status == 2
    assert one_error(err) == damaged_line(db, "file is not a database")


def test_a_relay_db_with_a_corrupted_page_fails_the_quick_check(state: Path) -> None:
    db = state / "relay.db"
    data = bytearray(db.read_bytes())
    page = 4096
    data[3 * page : 3 * page + 200] = b"\xff" * 200  # scribble over a b-tree page
    db.write_bytes(bytes(data))
    with pytest.raises(StateDirError, match=r"the state database is damaged \("):
        check_state_dir(state)


def test_an_sqlite_file_that_is_not_ours_is_refused(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    db = state / "relay.db"
    db.unlink()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    db.chmod(0o600)
    status, err = run(capsys, state)
    assert status == 2
    assert one_error(err) == (
        f"{db}: is an SQLite database without relay-runtime tables (no relay_schema or "
        "trust_meta): this is not a state database; move it away or point --state-dir elsewhere"
    )


def test_an_unreadable_relay_db_names_the_chmod(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = state / "relay.db"
    db.chmod(0o200)
    if os.geteuid() == 0:
        # Root reads anything: stand in for the refusal the kernel gives everyone else.
        real_connect = sqlite3.connect

        def connect(target: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
            if "relay.db" in target:
                raise sqlite3.OperationalError("unable to open database file")
            conn: sqlite3.Connection = real_connect(target, *args, **kwargs)
            return conn

        monkeypatch.setattr(sqlite3, "connect", connect)
        monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(StateDirError) as info:
        check_state_dir(state)
    assert str(info.value) == (
        f"{db}: the state database cannot be read (Permission denied); fix: chmod 600 {db}"
    )


@pytest.mark.parametrize("how", ["empty", "missing"])
def test_an_empty_or_missing_db_in_a_used_state_dir_needs_fresh_state(
    capsys: pytest.CaptureFixture[str], state: Path, how: str
) -> None:
    db = state / "relay.db"
    if how == "empty":
        db.write_bytes(b"")
    else:
        db.unlink()
    status, err = run(capsys, state)
    assert status == 2
    described = "empty (0 bytes)" if how == "empty" else "missing"
    assert one_error(err) == (
        f"{db}: the state database is {described}, but this state directory has been used "
        "before: the trust store (clients, admins, invites) and the dedupe window are gone. "
        "Restore relay.db from a backup (docs/operations.md, Backups), or run with "
        "--fresh-state to start with empty state"
    )
    check_state_dir(state, fresh=True)  # the flag accepts it


def test_an_empty_db_in_a_new_state_dir_is_fine(tmp_path: Path) -> None:
    state = tmp_path / "new"
    state.mkdir(mode=0o700)
    (state / "relay.db").touch(mode=0o600)
    assert not used_before(state)
    check_state_dir(state)
    check_state_dir(tmp_path / "not-yet")  # missing: run creates it


def test_a_healthy_state_dir_passes_and_nothing_is_changed(state: Path) -> None:
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in state.iterdir()}
    check_state_dir(state)
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in state.iterdir()}
    assert after == before


def test_a_failing_run_creates_no_state_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing run leaves no ~/.local/state/relay-runtime behind."""
    monkeypatch.setenv("GATEWAY_RELAY_OUTBOX_MAX", "-5")
    status = main(["run", "--relay-url", "ws://127.0.0.1:9"])
    assert status == 2
    assert not (tmp_path / "home").exists()
    capsys.readouterr()


# --------------------------------------------------------------------------- processes


def test_a_world_writable_state_dir_refused_by_the_real_process(state: Path) -> None:
    import subprocess
    import sys

    state.chmod(0o777)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_RELAY_", "RELAY_"))}
    done = subprocess.run(
        [sys.executable, "-m", "relay_runtime", "run", "--relay-url", "ws://127.0.0.1:9",
         "--state-dir", str(state)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"{PREFIX}{state}: the state directory is writable by group or others (mode 0777); "
        f"fix: chmod 700 {state}\n"
    )
    assert stat.S_IMODE(state.stat().st_mode) == 0o777  # reported, not changed


async def test_fresh_state_starts_a_gateway_on_an_emptied_database(tmp_path: Path) -> None:
    """--fresh-state is an explicit choice: the real gateway then starts and serves."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "relay.db").touch(mode=0o600)
    (state / "relay.db.lock").touch(mode=0o600)
    secret = new_secret()
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = gateway_env(secret, state)
        args = ["run", "--relay-url", connector.base_url, "--trust", "open"]
        with trio.fail_after(GUARD_S):
            async with gateway_process(args, env) as refused:
                assert await refused.wait_exit() == 2
            assert "run with --fresh-state" in refused.text()
            assert "starting gateway" not in refused.text()
            async with gateway_process([*args, "--fresh-state"], env) as gw:
                await gw.wait_line("gateway ready")
                gw.signal(signal.SIGTERM)
                assert await gw.wait_exit() == 0
        nursery.cancel_scope.cancel()
    assert (state / "relay.db").stat().st_size > 0
