"""``relay-runtime connector --bench N``: the connector as a load source that times replies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import trio

from protocol._actions import Send
from protocol._events import MessageEvent, SessionSource
from protocol._frames import Outbound, OutboundResult
from relay_runtime.connector import Connection, ReferenceConnector


class Bench:
    """Injects ``count`` messages at ``rate``/s and times each until the gateway's reply.

    Each message goes to its own chat ``bench-<i>``; its round trip ends at the first
    ``outbound`` ``send`` to that chat. Times are seconds of the trio clock. Bound
    :meth:`run` (and :meth:`settle`) with a cancel scope; :meth:`summary` reports whatever
    was measured.
    """

    def __init__(self, connector: ReferenceConnector, count: int, rate: float) -> None:
        self.connector = connector
        self.count = count
        self.rate = rate
        self.started: dict[str, float] = {}
        self.latencies: list[float] = []
        self.answered: set[str] = set()
        self._seen = 0
        self._t0: float | None = None
        self.gateway_id: str | None = None

    async def run(self) -> None:
        """Wait for a gateway, inject every message on schedule, wait for every reply.

        The first gateway to complete a handshake is the one measured.
        """
        connector = self.connector

        def handshaken() -> Connection | None:
            return next((c for c in connector.connections if c.open and c.handshaken), None)

        await connector.wait_for(lambda: handshaken() is not None)
        first = handshaken()
        assert first is not None
        self.gateway_id = gateway_id = first.gateway_id
        self._t0 = t0 = trio.current_time()
        for i in range(self.count):
            chat = f"bench-{i}"
            await trio.sleep_until(t0 + i / self.rate)
            self.started[chat] = trio.current_time()
            source = SessionSource(platform="relay", chat_id=chat, chat_type="dm", user_id="u")
            event = MessageEvent(text=f"ping {i}", source=source)
            await connector.inject(event, gateway_id=gateway_id)
        await connector.wait_for(self._collect)

    async def settle(self) -> None:
        """After :meth:`run`: wait until the connector answered every ``send`` it timed, then
        close the measured gateway's sockets 1001 (going away), so the gateway sees each of
        its sends succeed and the connection end cleanly rather than reset mid-reply.

        Bound it with a cancel scope.
        """
        connector = self.connector
        asked = {
            r.frame.request_id
            for r in connector.received
            if isinstance(r.frame, Outbound)
            and isinstance(r.frame.action, Send)
            and r.frame.action.chat_id in self.answered
        }

        def answered() -> bool:
            results = (s.frame for s in connector.sent)
            done = {f.request_id for f in results if isinstance(f, OutboundResult)}
            return asked <= done

        await connector.wait_for(answered)
        if self.gateway_id is not None:
            await connector.drop(self.gateway_id, code=1001, reason="bench done")

    def _collect(self) -> bool:
        received = self.connector.received
        for record in received[self._seen :]:
            frame = record.frame
            if isinstance(frame, Outbound) and isinstance(frame.action, Send):
                chat = frame.action.chat_id
                if chat in self.started and chat not in self.answered:
                    self.answered.add(chat)
                    self.latencies.append(record.at - self.started[chat])
        self._seen = len(received)
        return len(self.answered) == self.count

    def summary(self) -> dict[str, Any]:
        """The figures so far, as one JSON-ready object."""
        self._collect()
        latencies = sorted(self.latencies)
        t0 = trio.current_time() if self._t0 is None else self._t0
        return {
            "count": self.count,
            "answered": len(self.answered),
            "rate": self.rate,
            "duration_s": round(trio.current_time() - t0, 6),
            "p50_ms": _percentile_ms(latencies, 0.50),
            "p95_ms": _percentile_ms(latencies, 0.95),
            "p99_ms": _percentile_ms(latencies, 0.99),
            "max_ms": _percentile_ms(latencies, 1.0),
        }


def _percentile_ms(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return round(sorted_values[index] * 1000, 3)
