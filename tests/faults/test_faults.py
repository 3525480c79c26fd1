"""Nothing lost, nothing twice: real gateway processes under kill -9, SIGTERM, a connector
restart, a burst and a full disk, counted from the connector's journal (issue 11).

Each scenario runs ``python -m relay_runtime run`` children (the fault agent: ``msg <n>`` ->
``reply <n>``, 200 ms unless said) against the reference connector in its own process
(``connector_proc.py``), which injects a scripted schedule and journals every delivery,
ack and post to disk. The verdict is exact counts from that journal: every scheduled message
answered exactly once (posts counted after the connector's ``requestId`` dedupe), none lost,
every buffered delivery acked. Turns the gateway ran again are counted and reported.

Randomised schedules print their seed; ``RELAY_FAULT_SEED=<n>`` replays the same schedule
(the kill points are defined by journal progress, plus a seeded delay). Each scenario prints
one ``faults: <scenario> ...`` line (also in the terminal summary).
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
import trio

from tests.faults.full_disk import full_disk
from tests.faults.harness import fault_run
from tests.faults.verdict import check, report

MESSAGES = 500
#: Overall bound per scenario: generous; a correct runtime needs a fraction of it.
SCENARIO_S = 170.0

pytestmark = pytest.mark.timeout(SCENARIO_S + 60)


def seed_for(scenario: str) -> int:
    given = os.environ.get("RELAY_FAULT_SEED")
    seed = int(given) if given else random.randrange(2**32)
    print(f"faults: {scenario} seed={seed} (replay with RELAY_FAULT_SEED={seed})")
    return seed


def kill_points(rng: random.Random, kills: int, messages: int) -> list[tuple[int, float]]:
    """``(posts reached, then seconds)`` per kill: where in the run, and how far into a turn
    (0-0.15 s: the 200 ms turns that started last are still running)."""
    thresholds = sorted(rng.sample(range(messages // 20, messages * 9 // 10), kills))
    return [(t, rng.uniform(0.0, 0.15)) for t in thresholds]


@pytest.mark.parametrize("mode", ["buffered", "live"])
async def test_kill_9_of_the_gateway_loses_nothing_and_repeats_nothing(
    tmp_path: Path, mode: str
) -> None:
    name = f"kill9-{mode}"
    rng = random.Random(seed_for(name))
    points = kill_points(rng, 5, MESSAGES)
    kills = mid_turn = 0
    with trio.fail_after(SCENARIO_S):
        async with fault_run(name, tmp_path, messages=MESSAGES, mode=mode) as run:
            try:
                await run.start_connector()
                await run.start_gateway()
                for threshold, delay in points:
                    await run.at_posts(threshold)
                    if mode == "live":
                        await run.hold_live()
                    await trio.sleep(delay)  # where in a turn the kill lands (seeded)
                    mid_turn += run.live_mid_turn()
                    code, _ = await run.stop_gateway(signal.SIGKILL)
                    assert code == -signal.SIGKILL
                    kills += 1
                    if mode == "live":
                        await run.resume()
                    await run.start_gateway()
                code, _ = await run.finish()
            finally:
                await run.shutdown()
                extra = {"live_mid_turn_at_kill": mid_turn} if mode == "live" else {}
                result = report(run, kills=kills, **extra)
    assert code == 0, run.gateways[-1].tail()
    check(result)


async def test_connector_restarts_mid_run_lose_nothing_and_repeat_nothing(tmp_path: Path) -> None:
    name = "connector-restart"
    restarts = 0
    with trio.fail_after(SCENARIO_S):
        async with fault_run(name, tmp_path, messages=MESSAGES, mode="mixed") as run:
            try:
                await run.start_connector()
                await run.start_gateway()
                # One crash (kill -9) and one orderly stop of the connector, mid-run, each with
                # replies in flight (sends left unanswered until 8 are pending); each restart
                # reloads the journal (un-acked buffer, performed requestIds).
                for threshold, signum in ((150, signal.SIGKILL), (350, signal.SIGTERM)):
                    await run.at_posts(threshold)
                    await run.gate_sends(8)
                    await run.kill_connector(signum)
                    restarts += 1
                    await run.start_connector()  # a new connector answers sends again
                code, _ = await run.finish()
            finally:
                await run.shutdown()
                result = report(run, connector_restarts=restarts)
    assert code == 0, run.gateways[-1].tail()
    check(result)


async def test_sigterm_with_sends_pending_loses_nothing_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    name = "sigterm-pending"
    rng = random.Random(seed_for(name))
    points = kill_points(rng, 3, MESSAGES)
    exits: list[tuple[int | None, float]] = []
    pending_at_signal: list[int] = []
    with trio.fail_after(SCENARIO_S):
        async with fault_run(name, tmp_path, messages=MESSAGES, mode="live") as run:
            try:
                await run.start_connector()
                await run.start_gateway()
                for threshold, _ in points:
                    await run.at_posts(threshold)
                    # The connector stops answering sends: replies are pending at the signal
                    # and stay so through the drain; the next gateway must send them again.
                    await run.gate_sends(3)
                    pending_at_signal.append(run.pending_sends)
                    exits.append(await run.stop_gateway(signal.SIGTERM))
                    await run.open_sends()
                    await run.start_gateway()
                exits.append(await run.finish())
            finally:
                await run.shutdown()
                result = report(
                    run,
                    sigterms=len(exits),
                    pending_at_sigterm=",".join(map(str, pending_at_signal)),
                    slowest_exit_s=f"{max((s for _, s in exits), default=0):.1f}",
                )
    assert [code for code, _ in exits] == [0] * len(exits), run.gateways[-1].tail()
    check(result)


async def test_a_burst_of_10000_at_once_is_answered_exactly_once(tmp_path: Path) -> None:
    name = "burst-10000"
    messages = 10_000
    # A fast agent: the burst measures the gateway's reading and dispatch, not the agent.
    options = {"messages": messages, "mode": "live", "rate": 0.0, "agent_delay_s": 0.0}
    elapsed: float | None = None
    with trio.fail_after(SCENARIO_S):
        async with fault_run(name, tmp_path, **options) as run:
            try:
                await run.start_connector()
                gateway = await run.start_gateway()
                await run.ready()  # the connector writes the burst once the gateway is in
                started = trio.current_time()
                await run.wait_complete()
                elapsed = trio.current_time() - started
                code, _ = await run.stop_gateway(signal.SIGTERM)
            finally:
                await run.shutdown()
                timeouts = sum(g.count("timed out after") for g in run.gateways)
                result = report(
                    run,
                    outbound_timeouts=timeouts,
                    seconds="-" if elapsed is None else f"{elapsed:.1f}",
                )
    assert code == 0, gateway.tail()
    check(result)
    assert timeouts == 0, f"{timeouts} outbound requests timed out in a {elapsed:.1f} s burst"


async def test_a_full_state_filesystem_loses_nothing_and_sigterm_still_exits(
    tmp_path: Path,
) -> None:
    name = "disk-full"
    sigterm: tuple[int | None, float] = (None, 0.0)
    with full_disk(tmp_path / "state") as disk:
        name = f"disk-full-{disk.mode}"
        with trio.fail_after(SCENARIO_S):
            async with fault_run(name, tmp_path, messages=MESSAGES, mode="mixed") as run:
                try:
                    await run.start_connector()
                    gateway = await run.start_gateway()
                    # Episode 1: the disk fills mid-run, then space comes back; the same
                    # process must carry on by itself.
                    await run.at_posts(100)
                    disk.fill(gateway.process.pid)
                    run.moved()
                    await trio.sleep(3.0)  # how long the disk stays full (the fault, not a wait)
                    disk.free()
                    run.moved()
                    await run.at_posts(300)  # the same process, after space came back
                    # Episode 2: full again, and the operator stops the gateway meanwhile.
                    disk.fill(gateway.process.pid)
                    run.moved()
                    await trio.sleep(1.5)
                    sigterm = await run.stop_gateway(signal.SIGTERM)
                    disk.free()
                    await run.start_gateway()
                    code, _ = await run.finish()
                finally:
                    await run.shutdown()
                    result = report(
                        run,
                        full_episodes=disk.episodes,
                        sigterm_exit=sigterm[0],
                        sigterm_s=f"{sigterm[1]:.1f}",
                        going_idle=run.idles,
                    )
    assert sigterm[0] is not None, "SIGTERM with the disk full did not end the gateway"
    assert code == 0, run.gateways[-1].tail()
    check(result)
