"""Agents the process-level tests run inside ``python -m relay_runtime run`` (on PYTHONPATH).

Each agent appends one line per call to ``$E2E_AGENT_LOG`` (``start <text>`` before it works,
``end <text>`` when it answers), so a test can see what ran, how often, and when.
"""

from __future__ import annotations

import os

import trio


def _note(kind: str, text: str) -> None:
    path = os.environ.get("E2E_AGENT_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{kind} {text}\n")


async def slow_echo(turn: object) -> str:
    """Echo after ``$E2E_AGENT_DELAY_S`` seconds (default 0.3).

    While the file ``$E2E_HOLD_FILE`` exists, a message whose text is ``$E2E_HOLD_TEXT``
    does not finish: a test can kill the process in the middle of exactly that turn.
    """
    text = str(getattr(turn, "text", ""))
    _note("start", text)
    hold = os.environ.get("E2E_HOLD_FILE")
    if hold and text == os.environ.get("E2E_HOLD_TEXT"):
        # The test removes the file; there is no event to wait on across processes.
        while await trio.Path(hold).exists():  # noqa: ASYNC110
            await trio.sleep(0.01)
    await trio.sleep(float(os.environ.get("E2E_AGENT_DELAY_S", "0.3")))
    _note("end", text)
    return f"echo: {text}"
