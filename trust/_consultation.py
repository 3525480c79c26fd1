"""What the engine hands the trust agent: the request, the client's read tools, and the
interface an agent implements (:class:`TrustAgentLike`; the real one is :mod:`trust._agent`)."""

from __future__ import annotations

from typing import Protocol

import attrs

from trust._model import AgentVerdict, ClientState
from trust._policy import Policy
from trust._store.base import ClientStore


@attrs.frozen
class ClientTools:
    """The trust agent's read tools, bound to the client under review (no id parameter)."""

    client_id: str
    store: ClientStore

    async def get_level(self) -> str:
        """The client's effective level."""
        return (await self.store.get(self.client_id)).effective_level

    async def get_history(self) -> list[dict[str, object]]:
        """The client's last 10 audit rows, without actors."""
        rows = await self.store.audit(self.client_id, 10)
        return [
            {
                "at": r.at,
                "action": r.action,
                "from": r.from_level,
                "to": r.to_level,
                "tier": r.tier,
                "reason": r.reason,
            }
            for r in rows
        ]


@attrs.frozen
class ConsultRequest:
    """Everything the trust agent is given about one message (TR §7)."""

    policy: Policy
    client: ClientState
    platform: str
    chat_type: str
    trigger: str
    untrusted: str = attrs.field(repr=False)
    tools: ClientTools


class TrustAgentLike(Protocol):
    """The LLM tier as the engine calls it (the real one is :mod:`trust._agent`)."""

    async def consult(self, request: ConsultRequest) -> AgentVerdict | None:
        """A verdict, or None when the agent failed (it logs and counts the cause)."""
        ...
