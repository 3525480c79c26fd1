"""The echo agent: the demo and test default."""

from __future__ import annotations

from typing import Protocol


class _HasText(Protocol):
    @property
    def text(self) -> str: ...


async def echo(turn: _HasText) -> str | None:
    """Reply with the inbound text, unchanged."""
    return turn.text
