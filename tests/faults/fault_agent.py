"""The agent the fault suite runs inside ``python -m relay_runtime run`` (put on PYTHONPATH).

It answers message ``msg <n>`` with ``reply <n>`` after ``$FAULT_AGENT_DELAY_S`` seconds
(default 0.2: a slow agent, so crashes land mid-turn). Around the work it writes
``start <n>`` and ``end <n>`` to standard output with one ``write(2)`` each: the harness
reads that pipe, so the lines survive a ``kill -9`` and never touch the state filesystem.
"""

from __future__ import annotations

import os

import trio

_DELAY_S = float(os.environ.get("FAULT_AGENT_DELAY_S", "0.2"))


def _note(kind: str, n: str) -> None:
    os.write(1, f"{kind} {n}\n".encode())


async def slow_reply(turn: object) -> str:
    """Answer ``msg <n>`` with ``reply <n>`` after the configured delay."""
    text = str(getattr(turn, "text", ""))
    n = text.removeprefix("msg ")
    _note("start", n)
    if _DELAY_S > 0:
        await trio.sleep(_DELAY_S)
    _note("end", n)
    return f"reply {n}"
