"""The connection's armed timers, fired by a task in whichever nursery is current (RC §6).

The pure machine arms and cancels timers as actions; :class:`Timers` keeps their deadlines
across sockets (the 4401 ``expired`` window outlives one), and :meth:`Timers.run` is the task
the supervisor starts in each socket's nursery and in each back-off wait, so a timer fires
only while someone owns a nursery to fire it in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import trio

from protocol._lifecycle import Timer


class Timers:
    """Deadlines by timer, on the trio clock; at most one of each is armed."""

    def __init__(self) -> None:
        self._at: dict[Timer, float] = {}
        self._changed = trio.Event()

    def arm(self, timer: Timer, seconds: float) -> None:
        """Arm ``timer`` to fire ``seconds`` from now (re-arming replaces it)."""
        self._at[timer] = trio.current_time() + seconds
        self._changed.set()

    def cancel(self, timer: Timer) -> None:
        """Disarm ``timer`` if it is armed."""
        self._at.pop(timer, None)
        self._changed.set()

    def clear(self) -> None:
        """Disarm every timer."""
        self._at.clear()
        self._changed.set()

    def armed(self, timer: Timer) -> bool:
        """Whether ``timer`` is armed."""
        return timer in self._at

    async def run(self, fire: Callable[[Timer], None]) -> NoReturn:
        """Call ``fire(timer)`` for each timer as it comes due, until cancelled."""
        while True:
            changed = self._changed = trio.Event()
            if not self._at:
                await changed.wait()
                continue
            timer, at = min(self._at.items(), key=lambda item: item[1])
            with trio.move_on_at(at):
                await changed.wait()
                continue
            # Re-armed or cancelled at the very deadline: look again.
            if self._at.get(timer) == at:
                del self._at[timer]
                fire(timer)
