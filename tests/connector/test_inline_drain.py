"""Buffered entries sent inline (issue 15): order, the drain window, the idle flip.

An entry appended while its gateway is connected and draining goes out from the injecting
task, and an ``inbound_ack`` sends what its freed slot allows from the reading task; the
drain task is woken only for what those two do not cover. These tests pin what that must
keep: injection order across concurrent injectors, never more than ``drain_window``
un-acked, and the buffered-only flip cleared once the buffer empties.
"""

from __future__ import annotations

import trio

from protocol import Inbound

from .peer import GATEWAY, dial, good_headers
from .test_server import LIMIT, event, ready, start


async def test_concurrent_injections_go_out_in_order_within_the_window(nursery):
    connector = await start(nursery, always_buffer=True, drain_window=4)
    texts = [f"m{n:03d}" for n in range(120)]
    received: list[str] = []
    numbers: list[int] = []  # the n of each bufferId ``buf-<prefix>-<n>``, in append order
    most_unacked = 0
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)

            async def gateway() -> None:
                nonlocal most_unacked
                unacked: list[str] = []
                while len(received) < len(texts):
                    frame = await peer.expect(Inbound)
                    assert frame.buffer_id is not None
                    received.append(frame.event.text)
                    numbers.append(int(frame.buffer_id.rsplit("-", 1)[1]))
                    unacked.append(frame.buffer_id)
                    most_unacked = max(most_unacked, len(unacked))
                    # Ack in pairs, so the window really fills before slots free up.
                    if len(unacked) >= 2 or len(received) == len(texts):
                        for buffer_id in unacked:
                            await peer.ack(buffer_id)
                        unacked.clear()

            async def inject(chunk: list[str]) -> None:
                for text in chunk:
                    await connector.inject(event(text))

            async with trio.open_nursery() as inner:
                inner.start_soon(gateway)
                # Three injectors one after another in time, each many entries at once.
                for start_at in range(0, len(texts), 40):
                    inner.start_soon(inject, texts[start_at : start_at + 40])
                    await trio.lowlevel.checkpoint()
            await connector.wait_for(lambda: not connector.buffered(GATEWAY))
    assert numbers == sorted(numbers)  # sent in the order they were buffered
    assert sorted(received) == texts
    for start_at in range(0, len(texts), 40):  # and each injector's own order kept
        mine = [t for t in received if texts[start_at] <= t <= texts[start_at + 39]]
        assert mine == texts[start_at : start_at + 40]
    assert most_unacked <= 4


async def test_an_ack_that_empties_the_buffer_clears_the_idle_flip(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            connector.hold(GATEWAY)
            await connector.inject(event("held"))
            assert connector.is_buffered_only(GATEWAY)
            connector.flush(GATEWAY)
            frame = await peer.expect(Inbound)
            assert frame.buffer_id is not None
            await peer.ack(frame.buffer_id)
            await connector.wait_for(lambda: not connector.is_buffered_only(GATEWAY))
    assert connector.buffered(GATEWAY) == []
