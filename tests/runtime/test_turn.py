"""Turn: reply chunking and the outbound actions as they reach the wire (R14-R20)."""

from __future__ import annotations

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from protocol import MessageEvent, SessionSource, placeholder_descriptor, text_length
from protocol._results import DISABLED, NOT_CONNECTED, OP_NOT_SUPPORTED_PREFIX, TRANSPORT_CLOSED
from relay_runtime._replies import Replies
from relay_runtime._turn import Turn, chunk_text
from tests.runtime.dispatch_helpers import MemoryState, WireLink, wire_link
from trust import Decision

# ----------------------------------------------------------------------------- chunking


def _rejoins(text: str, pieces: list[str]) -> bool:
    """Pieces are consecutive slices of ``text``, apart by nothing or one newline/space."""
    positions = {0}
    for i, piece in enumerate(pieces):
        starts = set(positions)
        if i:
            starts |= {p + 1 for p in positions if text[p : p + 1] in ("\n", " ")}
        positions = {p + len(piece) for p in starts if text.startswith(piece, p)}
        if not positions:
            return False
    return len(text) in positions


def test_chunk_fits_whole() -> None:
    assert chunk_text("hello", 5) == ["hello"]
    assert chunk_text("", 5) == [""]


def test_chunk_prefers_newline_over_space() -> None:
    assert chunk_text("aaa bbb\nccc ddd", 12) == ["aaa bbb", "ccc ddd"]


def test_chunk_splits_at_space_without_newline() -> None:
    assert chunk_text("one two three", 8) == ["one two", "three"]


def test_chunk_hard_cut_without_separator() -> None:
    assert chunk_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]


def test_chunk_utf16_counts_astral_as_two() -> None:
    text = "😀" * 5  # 10 UTF-16 units
    pieces = chunk_text(text, 4, "utf16")
    assert pieces == ["😀😀", "😀😀", "😀"]
    assert chunk_text(text, 4, "chars") == ["😀😀😀😀", "😀"]


def test_chunk_never_splits_a_surrogate_pair() -> None:
    # A surrogate pair as two code points (as left by surrogatepass decoding).
    pair = "\ud83d\ude00"
    pieces = chunk_text("ab" + pair + "cd", 3)
    assert pieces == ["ab", pair + "c", "d"]
    assert all(not p.endswith("\ud83d") for p in pieces)


@given(
    text=st.text(alphabet=st.sampled_from(["a", "b", " ", "\n", "é", "😀"]), max_size=200),
    limit=st.integers(min_value=2, max_value=40),
    unit=st.sampled_from(["chars", "utf16"]),
)
def test_chunk_pieces_fit_and_keep_the_text(text: str, limit: int, unit: str) -> None:
    pieces = chunk_text(text, limit, unit)
    assert all(text_length(p, unit) <= limit for p in pieces)
    assert _rejoins(text, pieces)


def test_chunk_rejects_a_nonpositive_limit() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        chunk_text("x", 0)


# ----------------------------------------------------------------------------- Turn actions


def make_turn(
    link: WireLink, *, guild: str | None = None, state: MemoryState | None = None
) -> Turn:
    source = SessionSource(
        platform="discord", chat_id="c1", chat_type="group", user_id="u1", guild_id=guild
    )
    event = MessageEvent(text="hi", source=source, message_id="m0", delivered_via_relay=True)
    link.router.remember(event)
    replies = Replies(link.router, state or MemoryState())
    return Turn(
        event=event,
        session_key="agent:main:discord:group:c1:u1",
        platform="discord",
        descriptor=link.router.descriptor_for("discord"),
        decision=Decision(allow=True, reason="t", tier="rule"),
        replies=replies,
    )


async def test_R14_send_has_the_five_keys_reply_to_null() -> None:
    link = wire_link()
    turn = make_turn(link)
    result = await turn.reply("hello")
    assert result.success
    assert result.message_id == "m1"
    action = link.written[0]["action"]
    assert list(action) == ["op", "chat_id", "content", "reply_to", "metadata"]
    assert action == {
        "op": "send",
        "chat_id": "c1",
        "content": "hello",
        "reply_to": None,
        "metadata": {},
    }


async def test_R14_reply_to_and_metadata_are_carried() -> None:
    link = wire_link()
    turn = make_turn(link)
    await turn.reply("hello", reply_to="m0", metadata={"k": "v"})
    action = link.written[0]["action"]
    assert action["reply_to"] == "m0"
    assert action["metadata"] == {"k": "v"}


async def test_R15_follow_up_has_exactly_five_keys() -> None:
    link = wire_link()
    turn = make_turn(link)
    await turn.follow_up("interaction_reply", "done")
    action = link.written[0]["action"]
    assert list(action) == ["op", "session_key", "kind", "content", "metadata"]
    assert action["session_key"] == "agent:main:discord:group:c1:u1"
    assert action["metadata"] == {}


async def test_R16_chat_info_sends_op_and_chat_id_only() -> None:
    link = wire_link(answer=lambda f: {"chat_info": {"name": "General", "type": "group"}})
    turn = make_turn(link)
    assert await turn.chat_info() == {"name": "General", "type": "group"}
    assert link.written[0]["action"] == {"op": "get_chat_info", "chat_id": "c1"}


async def test_R16_chat_info_defaults_when_disconnected_or_empty() -> None:
    link = wire_link(state="backoff")
    turn = make_turn(link)
    assert await turn.chat_info() == {"name": "c1", "type": "dm"}
    assert link.written == []
    link.state = "ready"
    link.answer = lambda f: {"success": True}
    assert await turn.chat_info() == {"name": "c1", "type": "dm"}


async def test_R17_edit_refused_without_supports_edit() -> None:
    link = wire_link()
    link.descriptors["discord"] = attrs.evolve(
        placeholder_descriptor("discord"), supports_edit=False
    )
    turn = make_turn(link)
    result = await turn.edit("m1", "new")
    assert result.error == OP_NOT_SUPPORTED_PREFIX + "edit"
    assert link.written == []


async def test_R17_ops_outside_supported_ops_refused() -> None:
    link = wire_link()
    link.descriptors["discord"] = attrs.evolve(
        placeholder_descriptor("discord"), supported_ops=("send", "edit")
    )
    turn = make_turn(link)
    assert (await turn.typing()).error == OP_NOT_SUPPORTED_PREFIX + "typing"
    assert await turn.chat_info() == {"name": "c1", "type": "dm"}
    assert link.written == []
    assert (await turn.edit("m1", "x")).success
    assert [f["action"]["op"] for f in link.written] == ["edit"]


async def test_R18_scope_injected_from_the_chats_last_inbound() -> None:
    link = wire_link()
    turn = make_turn(link, guild="g7")
    await turn.reply("a")
    await turn.typing()
    await turn.reply("b", metadata={"guild_id": "explicit"})
    await turn.reply("c", metadata={"scope_id": "s-explicit"})
    metas = [f["action"]["metadata"] for f in link.written]
    assert metas[0] == {"guild_id": "g7", "scope_id": "g7"}
    assert metas[1] == {"guild_id": "g7", "scope_id": "g7"}
    assert metas[2] == {"guild_id": "explicit"}
    assert metas[3] == {"scope_id": "s-explicit", "guild_id": "g7"}


async def test_R18_unknown_chat_gets_no_scope() -> None:
    link = wire_link()
    turn = make_turn(link)  # the chat's inbound had no guild
    await turn.reply("a")
    assert link.written[0]["action"]["metadata"] == {}


async def test_R19_egress_decline_is_final() -> None:
    declined = {
        "success": False,
        "error": "egress declined: not addressed",
        "code": "egress_declined",
        "retryable": True,
    }
    link = wire_link(answer=lambda f: declined)
    state = MemoryState()
    turn = make_turn(link, state=state)
    result = await turn.reply("hello")
    assert result.error_kind == "egress_declined"
    assert not result.retryable
    assert len(link.written) == 1
    assert state.outbox == {}


async def test_reply_is_chunked_to_the_descriptor_limit() -> None:
    link = wire_link()
    link.descriptors["discord"] = attrs.evolve(
        placeholder_descriptor("discord"), max_message_length=5
    )
    turn = make_turn(link)
    result = await turn.reply("aaaa bbbb cc", reply_to="m0")
    assert result.success
    actions = [f["action"] for f in link.written]
    assert [a["content"] for a in actions] == ["aaaa", "bbbb", "cc"]
    assert [a["reply_to"] for a in actions] == ["m0", None, None]


async def test_reply_stops_at_the_first_failed_piece() -> None:
    answers = iter([{"success": True}, {"success": False, "error": "boom"}])
    link = wire_link(answer=lambda f: next(answers))
    link.descriptors["discord"] = attrs.evolve(
        placeholder_descriptor("discord"), max_message_length=2
    )
    turn = make_turn(link)
    result = await turn.reply("aa bb cc")
    assert result.error == "boom"
    assert len(link.written) == 2


async def test_R20_no_outbound_api_raises(autojump_clock: trio.testing.MockClock) -> None:
    # Disconnected: edit/typing fail fast, send/follow_up queue.
    link = wire_link(state="backoff")
    state = MemoryState(outbox_max=1)
    turn = make_turn(link, state=state)
    assert (await turn.edit("m", "x")).error == NOT_CONNECTED
    assert (await turn.typing()).error == NOT_CONNECTED
    assert (await turn.reply("q")).queued
    # Outbox full: a turn's follow_up waits for room (it neither raises nor is dropped);
    # the turn's time limit or shutdown ends the wait. (A plain send is refused at once:
    # test_replies' R47.)
    with trio.move_on_after(60) as waited:
        await turn.follow_up("k", "c")
    assert waited.cancelled_caught
    assert len(await state.entries()) == 1
    # Disabled.
    link.state = "disabled"
    assert (await turn.reply("x")).error == DISABLED
    assert (await turn.edit("m", "x")).error == DISABLED
    # After stop: not outboxable ops get "transport closed".
    link.state = "closed"
    link.router.stopped = True
    closed = await turn.typing()
    assert (closed.error, closed.retryable) == (TRANSPORT_CLOSED, False)
    # No answer within 30 s: it may have gone out (ambiguous), so it is not dropped but
    # queued in the outbox under the same requestId, for the connector to de-duplicate.
    link.state = "ready"
    link.router.stopped = False
    state = MemoryState()
    turn = make_turn(link, state=state)
    link.answer = lambda f: None
    t0 = trio.current_time()
    late = await turn.reply("late")
    assert late.queued
    assert trio.current_time() - t0 == pytest.approx(30.0)
    (entry,) = state.outbox.values()
    assert entry.request_id == link.written[-1]["requestId"]
