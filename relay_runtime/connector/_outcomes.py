"""How the reference connector answers ``outbound`` frames.

Each op has a standing :data:`Outcome` (default :class:`Succeed`) and an optional queue of
one-shot outcomes that take precedence, so a test can say "the next ``send`` fails, then
back to normal". :class:`Delay` answers late and :class:`NoAnswer` never answers, for the
gateway's timeout and drop paths.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import attrs

OPS = ("send", "edit", "typing", "follow_up", "get_chat_info")


@attrs.frozen
class Succeed:
    """Perform the op: ``send``/``follow_up`` get a fresh ``message_id`` unless one is given.

    ``edit`` succeeds only for a message the connector sent (else ``success: false``);
    ``get_chat_info`` answers ``{chat_info: {name, type}}``.
    """

    message_id: str | None = None


@attrs.frozen
class Fail:
    """Answer ``success: false`` with ``error`` (and ``retryable`` / ``code`` when set)."""

    error: str = "connector refused the action"
    retryable: bool = False
    code: str | None = None

    def result(self) -> dict[str, Any]:
        """The wire result object."""
        out: dict[str, Any] = {"success": False, "error": self.error}
        if self.retryable:
            out["retryable"] = True
        if self.code is not None:
            out["code"] = self.code
        return out


@attrs.frozen
class Reply:
    """Answer with exactly this result object (for odd shapes the gateway must tolerate)."""

    result: Mapping[str, Any] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class Delay:
    """Answer as ``then`` would, ``seconds`` later (the connection may be gone by then)."""

    seconds: float
    then: Succeed | Fail | Reply = Succeed()


@attrs.frozen
class NoAnswer:
    """Never answer: the gateway's request must end by its own timeout or a drop."""


Outcome = Succeed | Fail | Reply | Delay | NoAnswer
#: The default outcome (frozen, so one instance serves every request).
_SUCCEED = Succeed()


@attrs.define
class OutcomeTable:
    """The standing outcome per op plus one-shot outcomes queued per op."""

    _standing: dict[str, Outcome] = attrs.field(factory=dict, init=False)
    _once: dict[str, deque[Outcome]] = attrs.field(factory=dict, init=False)

    def set(self, op: str, outcome: Outcome) -> None:
        """Use ``outcome`` for every later ``op`` (after any queued one-shots)."""
        self._standing[_check_op(op)] = outcome

    def push(self, op: str, *outcomes: Outcome) -> None:
        """Use ``outcomes`` for the next ``len(outcomes)`` ``op`` requests, in order."""
        self._once.setdefault(_check_op(op), deque()).extend(outcomes)

    def reset(self) -> None:
        """Back to :class:`Succeed` for every op, with no one-shots queued."""
        self._standing.clear()
        self._once.clear()

    def take(self, op: str) -> Outcome:
        """The outcome for one ``op`` request (consumes a one-shot if queued)."""
        queued = self._once.get(op)
        if queued:
            return queued.popleft()
        return self._standing.get(op, _SUCCEED)


def _check_op(op: str) -> str:
    if op not in OPS:
        raise ValueError(f"unknown outbound op {op!r}; expected one of {', '.join(OPS)}")
    return op
