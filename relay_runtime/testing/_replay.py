"""Replayable runs: worker threads run inline and a seeded scheduler, so one seed replays one
interleaving (:func:`run_deterministic`)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar, TypeVarTuple, Unpack

import trio
import trio.lowlevel
import trio.testing
import trio.to_thread

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@contextlib.contextmanager
def inline_threads(latency: Callable[[], float] | None = None) -> Iterator[None]:
    """Run every ``trio.to_thread.run_sync(...)`` call on the trio thread, in virtual time.

    A worker thread finishes at a moment only the OS decides, so a run whose state db works
    in threads (every gateway's) cannot replay exactly, even under ``MockClock``:
    :func:`autojump_around_threads` keeps timers honest, but which task runs first after
    a commit still depends on the thread. Inside this context the call runs the function
    synchronously instead: the limiter is acquired as trio's own call would (cancellable),
    then the function runs at once, then the caller waits ``latency()`` virtual seconds
    (default 0: one scheduling pass), shielded as a thread call that cannot be abandoned
    is. Other tasks run during that wait, as they would while a real thread works, so the
    interleavings a thread allows are still there, now chosen by the seed that drives
    ``latency``. The work is the same real work (e.g. SQLite on a real file); only the
    event loop blocks while it runs.

    Only call sites that look ``trio.to_thread.run_sync`` up when they call it are covered
    (the state db and the trust store do); ``trio.Path`` and other code that imported
    ``run_sync`` by name still use threads. Not reentrant across threads: use it around
    one ``trio.run`` at a time.
    """
    real = trio.to_thread.run_sync

    async def run_sync(
        sync_fn: Callable[[Unpack[Ts]], T],
        *args: *Ts,
        thread_name: str | None = None,
        abandon_on_cancel: bool = False,
        limiter: trio.CapacityLimiter | None = None,
    ) -> T:
        if limiter is None:
            limiter = trio.to_thread.current_default_thread_limiter()
        async with limiter:
            try:
                result = sync_fn(*args)
            finally:
                delay = latency() if latency is not None else 0.0
                # A thread call that may not be abandoned ignores cancellation until it ends.
                with trio.CancelScope(shield=not abandon_on_cancel):
                    if delay > 0:
                        await trio.sleep(delay)
                    else:
                        await trio.lowlevel.checkpoint()
        return result

    trio.to_thread.run_sync = run_sync
    try:
        yield
    finally:
        trio.to_thread.run_sync = real


@contextlib.contextmanager
def seeded_scheduler(seed: int) -> Iterator[None]:
    """Make trio's scheduling order, and the ``random`` module, a function of ``seed``.

    Trio runs each batch of runnable tasks in a randomized order (so no code comes to rely
    on one), drawn from a private ``random.Random``; it has a deterministic mode, sorting
    each batch by task creation before shuffling, that Hypothesis and pytest-trio switch
    on. This context switches it on and seeds that generator, and seeds the ``random``
    module (the gateway's backoff jitter uses ``random.uniform`` by default); both are put
    back afterwards. Trio documents neither attribute; they are the ones pytest-trio sets.
    """
    from trio._core import _run

    saved_flag = _run._ALLOW_DETERMINISTIC_SCHEDULING
    saved_trio, saved_global = _run._r.getstate(), random.getstate()
    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _run._r.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        _run._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag  # type: ignore[misc]
        _run._r.setstate(saved_trio)
        random.setstate(saved_global)


def run_deterministic(
    async_fn: Callable[[Unpack[Ts]], Awaitable[T]],
    *args: *Ts,
    seed: int,
    thread_latency: Callable[[], float] | None = None,
) -> T:
    """``trio.run(async_fn, *args)`` so that the same ``seed`` gives the same run.

    The run gets a ``MockClock(autojump_threshold=0)`` (virtual time, starting at 0, that
    jumps to the next timer whenever every task waits), :func:`seeded_scheduler` and
    :func:`inline_threads` with ``thread_latency``. Whatever the code under test decides
    from the clock, the scheduler, ``random`` or thread timing is then fixed by ``seed``;
    a run also needs no sockets (use memory streams, e.g.
    :meth:`ReferenceConnector.memory_dialer
    <relay_runtime.connector.ReferenceConnector.memory_dialer>`) and no other randomness
    that steers it (``uuid4`` request ids do not: they are never compared for order).
    A deadlock shows up at once as the first ``fail_after`` expiring in virtual time; a
    task that never blocks hangs for real, so keep a wall-clock backstop (pytest-timeout).
    """
    clock = trio.testing.MockClock(autojump_threshold=0)
    with seeded_scheduler(seed), inline_threads(thread_latency):
        return trio.run(async_fn, *args, clock=clock)
