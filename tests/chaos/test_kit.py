"""The replayable-run helpers of ``relay_runtime.testing`` the chaos test stands on."""

from __future__ import annotations

import random
import threading

import pytest
import trio
import trio.testing

from relay_runtime.testing import (
    inline_threads,
    reset_stream_pair,
    run_deterministic,
    seeded_scheduler,
)

# ----------------------------------------------------------------------- reset_stream_pair


async def test_a_plain_close_is_a_fin_the_peer_reads_what_was_sent() -> None:
    a, b = reset_stream_pair()
    await a.send_all(b"last words")
    await a.aclose()
    assert await b.receive_some() == b"last words"
    assert await b.receive_some() == b""
    assert not b.was_reset


async def test_an_abortive_close_loses_what_is_in_flight_both_ways() -> None:
    a, b = reset_stream_pair()
    await a.send_all(b"to b, never read")
    await b.send_all(b"to a, never read")
    await trio.aclose_forcefully(b)
    assert a.was_reset
    with pytest.raises(trio.BrokenResourceError):
        await a.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await a.send_all(b"after the reset")


async def test_an_abortive_close_wakes_a_reader_blocked_on_the_peer() -> None:
    a, b = reset_stream_pair()
    raised: list[BaseException] = []

    async def read() -> None:
        try:
            await a.receive_some()
        except trio.BrokenResourceError as exc:
            raised.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        await trio.aclose_forcefully(b)
    assert len(raised) == 1


# ----------------------------------------------------------------------- inline_threads


def test_inline_threads_run_on_the_trio_thread_after_a_virtual_latency() -> None:
    seen: list[tuple[str, float]] = []

    def work(tag: str) -> str:
        seen.append((threading.current_thread().name, trio.current_time()))
        return tag.upper()

    async def main() -> tuple[str, float]:
        result = await trio.to_thread.run_sync(work, "done")
        return result, trio.current_time()

    real = trio.to_thread.run_sync
    result, ended = run_deterministic(main, seed=1, thread_latency=lambda: 2.5)
    assert result == "DONE"
    assert seen == [(threading.main_thread().name, 0.0)]
    assert ended == 2.5
    assert trio.to_thread.run_sync is real  # put back


def test_an_inline_thread_call_is_not_cancelled_midway_and_errors_reach_the_caller() -> None:
    returned: list[str] = []

    async def main() -> tuple[bool, float]:
        def fail() -> None:
            raise ValueError("disk says no")

        with trio.move_on_after(1) as scope:
            with pytest.raises(ValueError, match="disk says no"):
                await trio.to_thread.run_sync(fail)
            returned.append(await trio.to_thread.run_sync(lambda: "ran"))  # 5 virtual s
            await trio.lowlevel.checkpoint()
            returned.append("not reached")
        return scope.cancelled_caught, trio.current_time()

    latencies = iter([0.0, 5.0])
    cancelled, now = run_deterministic(main, seed=1, thread_latency=lambda: next(latencies))
    # As trio's own call: the deadline (t=1) did not cut the call short; it returned at t=5
    # and the cancel landed at the next checkpoint.
    assert returned == ["ran"]
    assert (cancelled, now) == (True, 5.0)


def test_inline_threads_respect_the_limiter() -> None:
    async def main() -> list[str]:
        limiter = trio.CapacityLimiter(1)
        order: list[str] = []

        async def call(tag: str) -> None:
            await trio.to_thread.run_sync(order.append, tag, limiter=limiter)
            order.append(f"{tag} back")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "a")
            nursery.start_soon(call, "b")
        return order

    with inline_threads(lambda: 1.0):
        order = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # One at a time: the second call starts only once the first has come back.
    assert order in (["a", "a back", "b", "b back"], ["b", "b back", "a", "a back"])


# ----------------------------------------------------------------------- seeded_scheduler


def _interleaving(seed: int) -> list[int]:
    async def main() -> list[int]:
        order: list[int] = []

        async def worker(n: int) -> None:
            for _ in range(5):
                order.append(n)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(worker, n)
        return order

    return run_deterministic(main, seed=seed)


def test_the_seed_decides_the_interleaving() -> None:
    runs = {seed: _interleaving(seed) for seed in range(8)}
    assert all(_interleaving(seed) == order for seed, order in runs.items())
    assert len({tuple(order) for order in runs.values()}) > 1


def test_seeded_scheduler_puts_the_random_module_back() -> None:
    random.seed(99)
    expected = random.random()
    random.seed(99)
    with seeded_scheduler(5):
        assert random.random() == random.Random(5).random()
    assert random.random() == expected
