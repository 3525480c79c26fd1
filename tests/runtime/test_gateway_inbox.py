"""Issue 11 through a whole gateway and the reference connector on loopback: the drain
window for running turns, and a live turn resumed by the next gateway on the same state dir
with its replies re-sent under the same requestIds (the connector drops the repeat).

Real sockets, so no mock clock: every wait is on an observed event, under ``fail_after``.
"""

from __future__ import annotations

import contextlib
import secrets as pysecrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from protocol import MessageEvent, SessionSource
from relay_runtime import Gateway, Turn, run_gateway
from relay_runtime._delivery import Agent
from relay_runtime.config import GatewayConfig
from relay_runtime.connector import ReferenceConnector

GATEWAY_ID = "gw-inbox"
GUARD_S = 30.0


def event(text: str, message_id: str) -> MessageEvent:
    source = SessionSource(platform="discord", chat_id="c1", chat_type="group", user_id="u1")
    return MessageEvent(text=text, source=source, message_id=message_id)


@contextlib.asynccontextmanager
async def gateway_on(
    connector: ReferenceConnector, secret: str, state_dir: Path, agent: Agent
) -> AsyncIterator[tuple[Gateway, trio.Nursery]]:
    settings: dict[str, Any] = {
        "relay_url": connector.base_url,
        "gateway_id": GATEWAY_ID,
        "secret": secret,
        "state_dir": state_dir,
        "platform": "discord",
        "trust": "open",
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
    }
    async with trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            gateway = await nursery.start(run_gateway, GatewayConfig(**settings), agent)
        yield gateway, nursery
        nursery.cancel_scope.cancel()


def posted(connector: ReferenceConnector) -> list[str]:
    return [m.content for m in connector.messages.values()]


async def test_a_running_turn_finishes_in_the_drain_window_and_its_reply_goes_out(
    tmp_path: Path,
) -> None:
    secret = pysecrets.token_urlsafe(32)
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    started, release = trio.Event(), trio.Event()

    async def slow(turn: Turn) -> str:
        started.set()
        await release.wait()
        return f"re: {turn.text}"

    async with trio.open_nursery() as outer:
        await outer.start(connector.serve, "127.0.0.1", 0)
        async with gateway_on(connector, secret, tmp_path, slow) as (gateway, _):
            with trio.fail_after(GUARD_S):
                await connector.inject(event("slow", "m1"), gateway_id=GATEWAY_ID)
                await started.wait()
                acked: list[bool] = []
                async with trio.open_nursery() as ours:

                    async def go_idle() -> None:
                        acked.append(await gateway.go_idle())

                    ours.start_soon(go_idle)
                    # The connector buffers from its ack on; the turn still runs.
                    await connector.wait_for(lambda: connector.is_buffered_only(GATEWAY_ID))
                    assert gateway.dispatcher.running == 1
                    release.set()
                    await connector.wait_for(lambda: posted(connector) == ["re: slow"])
        outer.cancel_scope.cancel()
    assert acked == [True]
    assert gateway.stats["completed"] == 1


async def test_a_live_turn_cut_off_is_resumed_and_its_first_reply_is_not_posted_twice(
    tmp_path: Path,
) -> None:
    secret = pysecrets.token_urlsafe(32)
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    replied_once = trio.Event()

    async def stops_after_one_reply(turn: Turn) -> str:
        await turn.reply("first")
        replied_once.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def answers_in_full(turn: Turn) -> str:
        await turn.reply("first, written differently this time")
        return "second"

    async with trio.open_nursery() as outer:
        await outer.start(connector.serve, "127.0.0.1", 0)
        async with gateway_on(connector, secret, tmp_path, stops_after_one_reply) as (gw, _):
            with trio.fail_after(GUARD_S):
                delivery = await connector.inject(event("hi", "m1"), gateway_id=GATEWAY_ID)
                assert delivery.outcome == "live"
                await replied_once.wait()
                await gw.dispatcher.db.flush()  # (the dispatcher commits within 50 ms)
        # The gateway was cancelled with the turn unfinished, as a crash or a cut drain
        # leaves it. The next gateway on the same state dir resumes it.
        async with gateway_on(connector, secret, tmp_path, answers_in_full) as (gw, _):
            with trio.fail_after(GUARD_S):
                await connector.wait_for(lambda: len(posted(connector)) == 2)
                await gw.dispatcher.wait_idle()
            assert gw.stats["resumed"] == 1
        outer.cancel_scope.cancel()
    # The re-run's first reply had the first run's requestId: answered with the first
    # result, egressed nothing. The user sees the first run's text, then the new reply.
    assert posted(connector) == ["first", "second"]
    assert connector.duplicate_outbounds == 1
