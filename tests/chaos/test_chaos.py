"""Chaos: thousands of messages over 200 sessions while the connector keeps dropping the socket.

A real gateway (echo-like agent, SQLite state db) and the reference connector run in memory
under virtual time, every fault and interleaving drawn from one seed (see
``tests/chaos/runner.py``). Every message goes through the connector's ack-gated buffer, so
a message is only done once the gateway has acked it. The connector resets the socket (a
TCP-like abort: whatever is in flight either way is lost) at seeded-random frames, about
once every ~200 frames in either direction, so drops land while inbound is in flight, while
replies wait for their ``outbound_result`` (each ``send`` is answered after a seeded delay)
and, a few times, while the gateway is going idle; the outbox bound, the turn limit and the
drain window are drawn per seed (small ones or the defaults). Once every turn has started
the drops stop, and everything must then settle with no further fault. At the end:

* nothing lost — every message ran its turn and its reply reached the connector;
* no duplicate turns — the agent ran once per message (RC §7.3);
* no duplicate replies — one reply ``requestId`` per message (a ``send`` re-submitted after a
  drop reuses its ``requestId``, RC §6.2, and the connector deduplicates on it), and each
  reply posted into its chat once;
* per-session order — each session's turns ran in the order the messages were injected.

The seed is random per run and printed on failure; ``RELAY_CHAOS_SEED=<n>`` (with the same
``CHAOS_N``) replays a run exactly: same faults, same interleaving, same outcome.
``RELAY_CHAOS_LONG=1`` runs 10,000 messages (about 40 s of CPU) instead of 3,000 (about 8 s).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from tests.chaos.runner import run_chaos

LONG = os.environ.get("RELAY_CHAOS_LONG", "") not in ("", "0")
MESSAGES = int(os.environ.get("CHAOS_N", "10000" if LONG else "3000"))
#: Size of the replay checks (two or three whole runs each).
REPLAY_MESSAGES = 400
ROOT = Path(__file__).resolve().parents[2]


def _seed() -> int:
    given = os.environ.get("RELAY_CHAOS_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


def _replay_hint(seed: int, messages: int) -> str:
    return (
        f"seed {seed}; replay with RELAY_CHAOS_SEED={seed} CHAOS_N={messages} "
        f"python -m pytest tests/chaos/test_chaos.py -k no_loss"
    )


def test_chaos_no_loss_no_duplicates_order_kept() -> None:
    seed = _seed()
    outcome = run_chaos(seed, MESSAGES)
    assert not outcome.problems, "; ".join(
        [*outcome.problems, f"gateway {outcome.stats}", _replay_hint(seed, MESSAGES)]
    )
    print(outcome.summary())


def test_same_seed_same_run() -> None:
    """One seed, run twice in this process: the same faults, interleaving and outcome."""
    seed = _seed()
    first = run_chaos(seed, REPLAY_MESSAGES)
    second = run_chaos(seed, REPLAY_MESSAGES)
    assert first == second, f"two runs of one seed differ: {first} vs {second} (seed {seed})"
    assert not first.problems, "; ".join([*first.problems, _replay_hint(seed, REPLAY_MESSAGES)])
    # The fingerprint does tell runs apart: another seed is another run.
    other = run_chaos(seed + 1, REPLAY_MESSAGES)
    assert other.fingerprint != first.fingerprint


def test_seed_replays_in_a_fresh_process() -> None:
    """What ``RELAY_CHAOS_SEED`` relies on: another process (other hash seed) replays a run."""
    seed = _seed()
    here = run_chaos(seed, REPLAY_MESSAGES)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED=str(seed % 4_294_967_295 + 1))
    done = subprocess.run(
        [sys.executable, "-m", "tests.chaos.runner", str(seed), str(REPLAY_MESSAGES)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"fingerprint {here.fingerprint[:16]}" in done.stdout, (
        f"seed {seed} replayed differently in a fresh process: {done.stdout!r} vs "
        f"{here.summary()!r}"
    )
