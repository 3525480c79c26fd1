"""SIGINT/SIGTERM from the launcher's first instruction on: recorded, never fatal.

``python -m relay_runtime`` (and the ``relay-runtime`` script) call :func:`install` before
importing anything else, so a stop signal during start-up (imports, configuration, the
trust store) is remembered instead of killing the process with -15 or a
``KeyboardInterrupt`` traceback. Whoever takes over signals later (``run``'s watcher, the
demo) asks :func:`received` first; a command that does not handle signals itself calls
:func:`restore_defaults`, which also re-delivers a signal that arrived meanwhile.

This module imports nothing but :mod:`signal`: it must be cheap.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Final

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []
_installed: list[bool] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def install() -> None:
    """Record SIGINT/SIGTERM from now on (main thread only)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _record)
    _installed.append(True)


def installed() -> bool:
    """Whether :func:`install` ran in this process (the launcher owns the signals)."""
    return bool(_installed)


def received() -> signal.Signals | None:
    """The first stop signal recorded so far, if any."""
    return signal.Signals(_received[0]) if _received else None


def restore_defaults() -> None:
    """Give SIGINT/SIGTERM their usual behaviour back and re-deliver a recorded one."""
    if not _installed:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _installed.clear()
    if _received:
        signal.raise_signal(_received[0])
