"""The in-memory dedupe window (RC §7.3) and the state file that follows it."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from relay_runtime._dedupe import ClaimHandle, ClaimStatus, DedupeWindow
from relay_runtime._state import DB_FILENAME, ClaimRequest, StateDB
from relay_runtime._state._records import _claim_keys
from relay_runtime.testing import window_keys
from tests.runtime import state_steps as steps

DAY = 86400.0


def window(**kw: float) -> DedupeWindow:
    return DedupeWindow(window_s=kw.get("window_s", DAY), max_completed=int(kw.get("max", 3)))


def test_completed_wins_over_in_flight_and_the_older_claim_is_named() -> None:
    w = window()
    a, _ = w.claim(["msg:a"], 0)
    b, _ = w.claim(["buf:b"], 0)
    assert (a.status, b.status) == (ClaimStatus.NEW, ClaimStatus.NEW)
    both, _ = w.claim(["msg:a", "buf:b"], 1)
    assert both.status is ClaimStatus.IN_FLIGHT and both.handle == a.handle
    assert w.complete(b.handle, 2) == (True, [])
    both, _ = w.claim(["msg:a", "buf:b"], 3)
    assert both.status is ClaimStatus.COMPLETED and both.handle == b.handle
    assert (w.completed, w.in_flight) == (1, 1)


def test_a_delivery_without_keys_is_never_deduplicated() -> None:
    w = window()
    for _ in range(2):
        result, _ = w.claim([], 0)
        assert result.status is ClaimStatus.NEW and result.handle is None
    assert w.in_flight == 0


def test_completion_forgets_the_oldest_beyond_the_bound_and_expiry_by_the_window() -> None:
    w = window(max=2, window_s=100)
    handles = [w.claim([f"k{i}"], i)[0].handle for i in range(4)]
    assert [w.complete(h, 10 + i)[1] for i, h in enumerate(handles)] == [[], [], [1], [2]]
    assert w.status(["k0"]) is ClaimStatus.NEW
    assert w.status(["k3"]) is ClaimStatus.COMPLETED
    # k2 completed at 12, k3 at 13: a claim at 112.5 forgets k2 only.
    result, forgotten = w.claim(["k2"], 112.5)
    assert forgotten == [3] and result.status is ClaimStatus.NEW
    assert w.expire(113) == [4]


def test_release_and_complete_only_act_on_claims_in_flight() -> None:
    w = window()
    result, _ = w.claim(["k"], 0)
    assert w.complete(result.handle, 1)[0]
    assert not w.release(result.handle)
    assert not w.complete(result.handle, 2)[0]
    assert not w.release(None) and not w.complete(ClaimHandle(99), 0)[0]
    other, _ = w.claim(["j"], 0)
    assert w.release(other.handle)
    assert w.status(["j"]) is ClaimStatus.NEW


def test_a_completion_is_never_recorded_before_the_newest_one() -> None:
    w = window()
    a, _ = w.claim(["a"], 0)
    b, _ = w.claim(["b"], 0)
    assert a.handle is not None and b.handle is not None
    w.complete(a.handle, 10)
    w.complete(b.handle, 9)  # its clock read came first, its completion second
    assert (w.completed_at(a.handle), w.completed_at(b.handle)) == (10, 10)
    assert w.trim_one() == [a.handle.claim_id]  # completion order, as a restart would read


async def test_a_restart_trims_in_the_order_the_window_kept(tmp_path: Path) -> None:
    async with await StateDB.open(tmp_path, now=0.0, dedupe_max=2) as db:
        a = await steps.claim(db, ("relay", "c", "a"), None, 0.0)
        b = await steps.claim(db, ("relay", "c", "b"), None, 0.0)
        await steps.complete(db, a.handle, 10.0)
        await steps.complete(db, b.handle, 9.0)
    async with await StateDB.open(tmp_path, now=11.0, dedupe_max=1) as db:
        assert await steps.claim_status(db, ("relay", "c", "a"), None) is ClaimStatus.NEW
        assert await steps.claim_status(db, ("relay", "c", "b"), None) is ClaimStatus.COMPLETED


def test_ids_are_not_reused() -> None:
    w = DedupeWindow(window_s=DAY, max_completed=5, next_claim_id=10)
    w.load_completed(12, ["old"], 0.0)
    w.skip_to(11)
    result, _ = w.claim(["new"], 1)
    assert result.handle == ClaimHandle(13)


@pytest.mark.parametrize(("window_s", "max_completed"), [(0, 1), (1, 0)])
def test_bad_bounds_are_refused(window_s: float, max_completed: int) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        DedupeWindow(window_s=window_s, max_completed=max_completed)


# An operation: (kind, key index, buffer key index or None, time step).
ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["claim", "claim_turns", "complete", "complete_behind", "release", "prune"]
        ),
        st.integers(0, 5),
        st.one_of(st.none(), st.integers(0, 3)),
        st.floats(0, 25),
    ),
    min_size=4,
    max_size=40,
)


def keys_in_file(path: Path) -> list[tuple[str, str]]:
    """Every claim key the file at ``path`` holds, with its claim's state: a completed
    claim's keys are in its row, an in-flight one's are its running turn's."""
    with sqlite3.connect(path / DB_FILENAME) as raw:
        completed = raw.execute("SELECT key1, key2 FROM relay_dedupe").fetchall()
        running = raw.execute(
            "SELECT k_msg, k_buf FROM relay_turns WHERE state = 'running' AND claim_id IS NOT NULL"
        ).fetchall()
    raw.close()
    found = [(key, "completed") for row in completed for key in row if key is not None]
    for k_msg, k_buf in running:
        msg_key = None if k_msg is None else tuple(json.loads(k_msg))
        found.extend((key, "in_flight") for key in _claim_keys(msg_key, k_buf))  # type: ignore[arg-type]
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_after_any_history_a_restart_sees_what_the_window_saw(
    history: list[tuple[str, int, int | None, float]],
) -> None:
    """The claim tables follow the in-memory window exactly: whatever happened, reopening
    the file (a restart) gives the same answer for every completed delivery."""

    async def run(path: Path) -> None:
        now = 1000.0
        keys = [(("relay", "c", f"m{i}"), f"b{i % 4}") for i in range(6)]
        handles: dict[int, ClaimHandle | None] = {}
        async with await StateDB.open(path, now=now, dedupe_max=2, dedupe_window_s=60) as db:
            for kind, index, buf, step in history:
                now += step
                k_msg, _ = keys[index]
                k_buf = None if buf is None else f"b{buf}"
                if kind == "claim":
                    result = await steps.claim(db, k_msg, k_buf, now)
                    if result.status is ClaimStatus.NEW:
                        handles[index] = result.handle
                elif kind == "claim_turns":  # written behind, with the next key too
                    nxt = (index + 1) % len(keys)
                    requests = [
                        ClaimRequest("s", k_msg, k_buf),
                        ClaimRequest("s", keys[nxt][0], None),
                    ]
                    for i, (result, _) in zip(
                        (index, nxt), await db.claim_turns(requests, now), strict=True
                    ):
                        if result.status is ClaimStatus.NEW:
                            handles[i] = result.handle
                elif kind == "complete_behind" and index in handles:
                    await db.complete_turn(
                        handles[index], None, "completed", now, write_behind=True
                    )
                elif kind == "complete" and index in handles:
                    await steps.complete(db, handles[index], now)
                elif kind == "release" and index in handles:
                    await steps.release(db, handles.pop(index))
                elif kind == "prune":
                    await db.prune(now)
            await db.prune(now)  # reopening expires by the window too: line both up
            await db.flush()
            in_file = keys_in_file(path)
            # The file holds exactly the keys the window holds, each in the same state.
            window = window_keys(db)
            for key, state in in_file:
                assert window[key].value == state, key
            assert {key for key, _ in in_file} == set(window)
            assert sum(1 for _, state in in_file if state == "completed") <= 2 * 2  # keys
            seen = {
                (k_msg, b): await steps.claim_status(db, k_msg, b)
                for k_msg, _ in keys
                for b in [None, "b0", "b1", "b2", "b3"]
            }
        async with await StateDB.open(path, now=now, dedupe_max=2, dedupe_window_s=60) as db:
            for (k_msg, b), status in seen.items():
                # In-flight claims are released by a restart; completed ones are kept.
                expected = ClaimStatus.NEW if status is ClaimStatus.IN_FLIGHT else status
                assert await steps.claim_status(db, k_msg, b) is expected, (k_msg, b)

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run, Path(tmp))


@given(st.text(), st.text(min_size=1), st.text(min_size=1), st.text(min_size=1))
def test_claim_keys_are_the_json_text_they_always_were(
    platform: str, chat_id: str, message_id: str, k_buf: str
) -> None:
    """Keys kept in a file by an earlier version must still match: the key text is
    ``json.dumps`` of the tagged parts, compact."""
    keys = _claim_keys((platform, chat_id, message_id), k_buf)
    assert keys == [
        json.dumps(["msg", platform, chat_id, message_id], separators=(",", ":")),
        json.dumps(["buf", k_buf], separators=(",", ":")),
    ]
    assert _claim_keys((platform, 12345, 6), None) == [  # type: ignore[arg-type]
        json.dumps(["msg", platform, "12345", "6"], separators=(",", ":"))
    ]
