"""Agents that ship with relay-runtime: ``echo`` and ``openai_chat``.

An agent is any ``async def (turn) -> str | None``; a returned string is sent with
``turn.reply``.
"""

from relay_runtime.agents.echo import echo as echo
from relay_runtime.agents.openai_chat import openai_chat as openai_chat

__all__ = ["echo", "openai_chat"]
