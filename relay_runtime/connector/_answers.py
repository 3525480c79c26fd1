"""How the reference connector answers ``outbound``: outcomes, egress, the journal.

Idempotent by ``requestId`` per gateway: an action performed once is answered with its first
result when repeated (RC §6.2) and egresses nothing again.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

from protocol._actions import Edit, FollowUp, GetChatInfo, Send, Typing
from protocol._frames import Outbound, OutboundResult
from relay_runtime.connector._connection import Connection
from relay_runtime.connector._core import ConnectorCore
from relay_runtime.connector._outcomes import Delay, Fail, NoAnswer, Outcome, Reply, Succeed
from relay_runtime.connector._records import Post, SentMessage

log = logging.getLogger("relay.connector")

#: The actions that egress a post (tuples, not ``A | B`` unions built on every call).
_EGRESS = (Send, FollowUp, Edit)


class Answers(ConnectorCore):
    """``outbound`` handling of a :class:`~.server.ReferenceConnector`."""

    async def _on_outbound(self, conn: Connection, frame: Outbound) -> None:
        if self.on_outbound is not None:
            try:
                self.on_outbound(conn, frame)
            except Exception:
                log.exception("on_outbound observer failed; answering the frame anyway")
        first = self._repeat_result(conn, frame)
        if first is not None:
            # A repeat answers at once and takes no outcome: the table scripts egress.
            await self._write(conn, OutboundResult(request_id=frame.request_id, result=first))
            return
        outcome = self.outcomes.take(frame.action.OP)
        if isinstance(outcome, NoAnswer):
            return
        if isinstance(outcome, Delay):
            assert conn.nursery is not None
            conn.nursery.start_soon(self._answer_later, conn, frame, outcome)
            return
        # Answered at once: no checkpoint since the repeat check above, so it holds.
        await self._answer(conn, frame, outcome, checked=True)

    async def _answer_later(self, conn: Connection, frame: Outbound, delay: Delay) -> None:
        await trio.sleep(delay.seconds)
        await self._answer(conn, frame, delay.then)

    async def _answer(
        self, conn: Connection, frame: Outbound, outcome: Outcome, *, checked: bool = False
    ) -> None:
        result = self._perform(conn, frame, outcome, checked=checked)
        await self._write(conn, OutboundResult(request_id=frame.request_id, result=result))

    def _perform(
        self, conn: Connection, frame: Outbound, outcome: Outcome, *, checked: bool = False
    ) -> dict[str, Any]:
        """Perform ``frame`` as ``outcome`` says; the result to answer with.

        ``checked``: the caller found no earlier result for its ``requestId`` with no
        checkpoint since, so the repeat check is not made again.
        """
        if isinstance(outcome, Fail):
            return outcome.result()
        if isinstance(outcome, Reply):
            return dict(outcome.result)
        if isinstance(outcome, (Delay, NoAnswer)):  # only reached for a nested Delay
            raise TypeError(f"cannot answer with {outcome!r}")
        action = frame.action
        if isinstance(action, _EGRESS):
            # Checked again here: a repeat may arrive while the first is delayed.
            first = None if checked else self._repeat_result(conn, frame)
            if first is not None:
                return first
            result = self._egress(conn, frame, outcome)
            if result.get("success") is True:
                self._remember_performed(conn, frame, result)
            return result
        if isinstance(action, Typing):
            return {"success": True}
        assert isinstance(action, GetChatInfo)
        name, kind = self.chat_info.get(action.chat_id, (action.chat_id, "dm"))
        return {"chat_info": {"name": name, "type": kind}}

    def _egress(self, conn: Connection, frame: Outbound, outcome: Succeed) -> dict[str, Any]:
        """Post or edit a message as ``frame`` asks; the result to answer with."""
        action = frame.action
        if isinstance(action, (Send, FollowUp)):
            message_id = outcome.message_id or f"m-{next(self._message_ids)}"
            chat_id = action.chat_id if isinstance(action, Send) else action.session_key
            self._messages[message_id] = SentMessage(
                message_id=message_id,
                chat_id=chat_id,
                content=action.content,
                gateway_id=conn.gateway_id,
                platform=frame.platform,
            )
            if self.keep_records is not None and len(self._messages) > self.keep_records:
                self._messages.popitem(last=False)  # edits of it now answer "unknown message"
            self._journal_post(conn, frame, chat_id, message_id)
            return {"success": True, "message_id": message_id}
        assert isinstance(action, Edit)
        known = self._messages.get(action.message_id)
        if known is None or known.chat_id != action.chat_id:
            return {
                "success": False,
                "error": f"unknown message {action.message_id!r} in chat {action.chat_id!r}",
            }
        self._messages[action.message_id] = attrs.evolve(
            known, content=action.content, edits=known.edits + 1
        )
        self._journal_post(conn, frame, action.chat_id, action.message_id)
        return {"success": True}

    def _journal_post(
        self, conn: Connection, frame: Outbound, chat_id: str, message_id: str
    ) -> None:
        action = frame.action
        assert isinstance(action, _EGRESS)
        post = Post(
            seq=self._posts + 1,
            at=self.clock(),
            gateway_id=conn.gateway_id,
            platform=frame.platform or "",
            op=action.OP,
            chat_id=chat_id,
            message_id=message_id,
            content=action.content,
            request_id=frame.request_id,
        )
        self._posts += 1
        self._journal.append(post)
        if self.journal_sink is not None:
            try:
                self.journal_sink(post)
            except Exception:
                log.exception("journal sink failed; the post is journalled in memory only")

    def _repeat_result(self, conn: Connection, frame: Outbound) -> dict[str, Any] | None:
        """The first result of an action already performed under this ``requestId``, if any.

        A hit counts as a duplicate. Only performed (successful) egress is remembered: a
        failed attempt egressed nothing, so a retry under the same id is performed afresh.
        """
        key = (conn.gateway_id, frame.request_id)
        first = self._performed.get(key)
        if first is None:
            return None
        self._performed.move_to_end(key)
        self.duplicate_outbounds += 1
        log.info(
            "gateway %r: repeated requestId %r (%s); answering with the first result",
            conn.gateway_id,
            frame.request_id,
            frame.action.OP,
        )
        return dict(first)

    def _remember_performed(
        self, conn: Connection, frame: Outbound, result: dict[str, Any]
    ) -> None:
        self._performed[(conn.gateway_id, frame.request_id)] = dict(result)
        while len(self._performed) > self.request_id_memory:
            self._performed.popitem(last=False)
