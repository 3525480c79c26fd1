"""Serving one gateway until a signal drains it, and settling the start-up heap (AR §4).

:func:`serve_until_signalled` (public, re-exported by ``relay_runtime``) and the ``run``
command share one loop: the signals are taken over first, then one root nursery runs the
gateway and a signal watcher. The first SIGINT/SIGTERM drains through ``going_idle``
(bounded by ``drain_timeout_s``) and cancels; a second one cancels at once; one that arrived
during start-up stops before anything is dialed. :func:`settle_heap` is what the CLI does to
the garbage collector once the gateway is ready.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Final

import attrs
import trio

from relay_runtime import _stop_signals as stop_signals
from relay_runtime._delivery import Agent, TrustEvaluator
from relay_runtime._errors import leaves
from relay_runtime._gateway import Gateway, run_gateway
from relay_runtime._heap import settle_heap
from relay_runtime.config import GatewayConfig

# The run command's logger: its lines ("gateway ready", the drain) keep their logger name.
log = logging.getLogger("relay_runtime.cli.run")

#: Bound on the ``going_idle`` drain after a signal; the process exits within 10 s.
DRAIN_TIMEOUT_S: Final = 8.0
_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


@attrs.define(eq=False)
class _Shutdown:
    """What the signal watcher acts on: the root scope, and the gateway once it is ready."""

    scope: trio.CancelScope
    drain_timeout_s: float
    gateway: Gateway | None = None


async def _watch_signals(signals: AsyncIterator[int], shutdown: _Shutdown) -> None:
    """First signal: drain through ``going_idle`` (bounded), then cancel. Second: cancel.

    Signals after the second are swallowed by the receiver until the process has exited,
    so no number of them kills it with -15.
    """
    async for signum in signals:
        await _stop(signal.Signals(signum).name, signals, shutdown)
        return


async def _stop(name: str, signals: AsyncIterator[int], shutdown: _Shutdown) -> None:
    if shutdown.gateway is None:
        log.info("%s received before the gateway was ready; stopping", name)
        shutdown.scope.cancel()
        return
    log.info("%s received; draining through going_idle", name, extra={"signal": name})
    cut_by: list[str] = []
    with trio.move_on_after(shutdown.drain_timeout_s) as drain:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_next, signals, drain, cut_by)
            acked = await shutdown.gateway.go_idle()
            nursery.cancel_scope.cancel()
    if cut_by:
        log.warning("drain cut short by a second %s; stopping now", cut_by[0])
    elif drain.cancelled_caught:
        log.warning("drain did not finish within %.0f s; stopping anyway", shutdown.drain_timeout_s)
    else:
        log.info("drained", extra={"going_idle_acked": acked})
    shutdown.scope.cancel()


async def _cancel_on_next(
    signals: AsyncIterator[int], scope: trio.CancelScope, cut_by: list[str]
) -> None:
    async for signum in signals:
        cut_by.append(signal.Signals(signum).name)
        scope.cancel()
        return


async def serve_until_signalled(
    config: GatewayConfig,
    agent: Agent,
    *,
    trust: TrustEvaluator | None = None,
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
    freeze_heap: bool = False,
) -> None:
    """Run ``run_gateway`` in a root nursery with a SIGINT/SIGTERM drain (must be main thread).

    Returns after a signal-initiated drain or when the gateway stops by itself; raises what
    ``run_gateway`` raises (``ConfigError``, ``RelayDisabled``), as itself rather than in an
    exception group. ``freeze_heap``: call :func:`settle_heap` once ready (the CLI does; it
    owns the process).
    """

    @contextlib.asynccontextmanager
    async def given() -> AsyncIterator[TrustEvaluator | None]:
        yield trust

    await serve(config, agent, given, drain_timeout_s=drain_timeout_s, freeze_heap=freeze_heap)


async def serve(
    config: GatewayConfig,
    agent: Agent,
    trust: Callable[[], contextlib.AbstractAsyncContextManager[TrustEvaluator | None]],
    *,
    drain_timeout_s: float,
    freeze_heap: bool,
) -> None:
    """Take the signals over first, then open ``trust()`` and run the gateway under them."""
    with trio.open_signal_receiver(*_SIGNALS) as signals:
        early = stop_signals.received()
        if early is not None:  # recorded by the launcher while the process was starting
            log.info("%s received during start-up; stopping", early.name)
            return
        try:
            async with trio.open_nursery() as nursery:
                shutdown = _Shutdown(nursery.cancel_scope, drain_timeout_s)
                nursery.start_soon(_watch_signals, signals, shutdown)
                async with trust() as evaluator:
                    await _run_until_stopped(
                        config, agent, evaluator, nursery, shutdown, freeze_heap=freeze_heap
                    )
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise unwrap(group) from None


async def _run_until_stopped(
    config: GatewayConfig,
    agent: Agent,
    evaluator: TrustEvaluator | None,
    nursery: trio.Nursery,
    shutdown: _Shutdown,
    *,
    freeze_heap: bool = True,
) -> None:
    async def gateway_task(*, task_status: trio.TaskStatus[Gateway]) -> None:
        try:
            await run_gateway(config, agent, trust=evaluator, task_status=task_status)
        finally:
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as inner:
        gateway: Gateway = await inner.start(gateway_task)
        shutdown.gateway = gateway
        log.info(
            "gateway ready",
            extra={
                "event": "ready",
                "state": gateway.state,
                "gateway_id": config.gateway_id or "",
                "platforms": ",".join(gateway.descriptors),
            },
        )
        if freeze_heap:
            log.debug("start-up heap frozen", extra={"heap_frozen": settle_heap()})


def unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception a group carries besides cancellations, else the group itself."""
    _, rest = group.split(trio.Cancelled)
    if rest is None:
        return group
    carried = leaves(rest)
    return carried[0] if len(carried) == 1 else group
