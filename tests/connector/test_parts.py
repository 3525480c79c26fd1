"""The connector's pure parts: upgrade auth, the delivery buffer, the relevance gate, outcomes."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Inbound, MessageEvent, SessionSource
from protocol._auth import make_token, token_payload_unverified, verify_token
from protocol._codec import unstructure
from relay_runtime.connector import (
    DEFAULT_DESCRIPTORS,
    DeliveryBuffer,
    Fail,
    NoAnswer,
    OutcomeTable,
    RelevancePolicy,
    Succeed,
    generic_descriptor,
)
from relay_runtime.connector._buffer import SendCursor
from relay_runtime.connector._presets import INVALID_DESCRIPTOR
from relay_runtime.connector._relevance import admit
from relay_runtime.connector._upgrade_auth import authenticate, bearer_token

from .peer import SECONDARY, SECRET

NOW = 1_750_000_000
COLON_ID = "agent:main:discord:group:chanA:userX"


def secrets_for(gateway_id: str) -> list[str] | None:
    return {"gw-1": [SECRET, SECONDARY], COLON_ID: [SECRET]}.get(gateway_id)


# -- upgrade auth -----------------------------------------------------------------------------


def test_bearer_token_is_read_case_insensitively_and_only_as_bearer():
    assert bearer_token([(b"Authorization", b"Bearer abc")]) == "abc"
    assert bearer_token([(b"authorization", b"bearer  abc ")]) == "abc"
    assert bearer_token([(b"authorization", b"Basic abc")]) is None
    assert bearer_token([(b"x-other", b"Bearer abc")]) is None
    assert bearer_token([]) is None


def test_token_payload_unverified_keeps_colons_and_refuses_garbage():
    assert token_payload_unverified(make_token(COLON_ID, SECRET, 0)) == COLON_ID
    assert token_payload_unverified("not-base64url!!!") is None
    assert token_payload_unverified("") is None
    only_two = base64.urlsafe_b64encode(b"only:two").decode().rstrip("=")
    assert token_payload_unverified(only_two) is None
    assert token_payload_unverified(base64.urlsafe_b64encode(b"\xff\xfe:1:2").decode()) is None


@pytest.mark.parametrize(
    ("token", "gateway_id", "reject"),
    [
        (make_token("gw-1", SECRET, 300, now=NOW), "gw-1", None),
        (make_token("gw-1", SECONDARY, 300, now=NOW), "gw-1", None),
        (make_token(COLON_ID, SECRET, 60, now=NOW), COLON_ID, None),
        (make_token("gw-1", SECRET, 300, now=NOW - 301), "gw-1", "expired"),
        (make_token("gw-1", "other-secret", 300, now=NOW), None, "unauthorized"),
        (make_token("gw-2", SECRET, 300, now=NOW), None, "unknown_gateway"),
        ("not-base64url!!!", None, "malformed"),
        (None, None, "missing"),
    ],
)
def test_authenticate(token, gateway_id, reject):
    auth = authenticate(token, secrets_for, now=NOW)
    assert (auth.gateway_id, auth.reject) == (gateway_id, reject)
    assert auth.ok is (reject is None)


def test_token_valid_exactly_at_its_expiry():
    token = make_token("gw-1", SECRET, 300, now=NOW)
    assert authenticate(token, secrets_for, now=NOW + 300).ok
    assert authenticate(token, secrets_for, now=NOW + 301).reject == "expired"


def test_a_token_that_never_expires_is_refused_unless_legacy_tokens_are_accepted():
    # Behaviour change (issue 12): exp=0 was accepted; a leaked one is a permanent credential.
    forever = make_token(COLON_ID, SECRET, 0)
    auth = authenticate(forever, secrets_for, now=NOW)
    assert (auth.gateway_id, auth.reject, auth.close_reason) == (
        COLON_ID,
        "no_expiry",
        "unauthorized",
    )
    assert authenticate(forever, secrets_for, now=NOW, max_lifetime_s=None).ok


@pytest.mark.parametrize(
    ("ttl", "max_lifetime", "reject"),
    [
        (300, 600.0, None),  # what the gateway mints
        (600, 600.0, None),  # exactly at the limit
        (601, 600.0, "lifetime"),
        (30 * 365 * 86400, 600.0, "lifetime"),  # 30 years
        (30 * 365 * 86400, None, None),  # legacy tokens accepted
        (120, 60.0, "lifetime"),
    ],
)
def test_a_token_living_longer_than_the_maximum_is_refused(ttl, max_lifetime, reject):
    token = make_token("gw-1", SECRET, ttl, now=NOW)
    auth = authenticate(token, secrets_for, now=NOW, max_lifetime_s=max_lifetime)
    assert auth.reject == reject


#: The frozen cross-language vector R31 (tests/protocol/test_auth.py): exp=0, secret SECRET.
V1 = (
    "Z3ctaW5zdGFuY2UtMTowOjM3YWE3YjE0NWU4NzY0ZDQwM2JhOWM2MzlmMjMwZGQ2M2RlOGVkOTliODhm"
    "ZWQzNmFhMDI2MjVhOGE3ZTM1NjQ"
)


def test_the_hermes_vector_verifies_in_protocol_and_is_refused_only_by_connector_policy():
    assert verify_token(V1, [SECRET], now=NOW) == "gw-instance-1"
    legacy = authenticate(V1, lambda g: [SECRET], now=NOW, max_lifetime_s=None)
    assert (legacy.gateway_id, legacy.ok) == ("gw-instance-1", True)
    assert authenticate(V1, lambda g: [SECRET], now=NOW).reject == "no_expiry"


def test_lifetime_is_checked_only_for_genuine_tokens():
    forged = make_token("gw-1", "other-secret", 0)
    assert authenticate(forged, secrets_for, now=NOW).reject == "unauthorized"


def test_a_revoked_gateway_is_refused_with_a_valid_token():
    token = make_token("gw-1", SECRET, 300, now=NOW)
    auth = authenticate(token, secrets_for, now=NOW, is_revoked=lambda g: g == "gw-1")
    assert (auth.gateway_id, auth.reject, auth.close_reason) == ("gw-1", "revoked", "unauthorized")


# -- delivery buffer --------------------------------------------------------------------------


def inbound(text: str) -> Inbound:
    return Inbound(event=MessageEvent(text=text))


def test_buffer_stamps_ids_keeps_order_and_gates_on_acks():
    buffer = DeliveryBuffer()
    a = buffer.append(inbound("a"), "buf-1")
    buffer.append(inbound("b"), "buf-2")
    buffer.append(inbound("c"), "buf-3")
    assert a.buffer_id == "buf-1"
    assert buffer.next_unsent(set()) == a
    assert buffer.next_unsent({"buf-1"}).event.text == "b"
    assert buffer.ack("buf-2")
    assert not buffer.ack("buf-2")  # already gone
    assert buffer.ids() == ["buf-1", "buf-3"]
    assert [f.event.text for f in buffer] == ["a", "c"]
    assert buffer.next_unsent({"buf-1", "buf-3"}) is None
    assert buffer.acked == 1


@given(
    st.lists(
        st.tuples(st.sampled_from(["append", "send", "ack", "reconnect"]), st.integers(0, 30)),
        max_size=80,
    )
)
@settings(max_examples=300, deadline=None)
def test_buffer_cursor_finds_what_a_full_scan_finds(ops: list[tuple[str, int]]) -> None:
    """A connection's replay with its cursor sends the same entries, in the same order, as
    a scan from the oldest entry each time, through appends, acks and reconnects."""
    buffer = DeliveryBuffer()
    sent: set[str] = set()
    cursor = SendCursor()
    appended = 0
    for op, n in ops:
        if op == "append":
            appended += 1
            buffer.append(inbound(str(appended)), f"buf-{appended}")
        elif op == "send":
            for _ in range(n % 4 + 1):
                expected = buffer.next_unsent(sent)
                assert buffer.next_unsent(sent, cursor) == expected
                if expected is None:
                    break
                assert expected.buffer_id is not None
                sent.add(expected.buffer_id)
        elif op == "ack":
            ids = buffer.ids()
            if ids:
                gone = ids[n % len(ids)]  # out of order, sent or not (another connection's)
                assert buffer.ack(gone)
                sent.discard(gone)
        else:  # a new connection: nothing sent on it yet
            sent, cursor = set(), SendCursor()
    assert buffer.next_unsent(sent, cursor) == buffer.next_unsent(sent)


def test_buffer_refuses_duplicate_and_empty_ids():
    buffer = DeliveryBuffer()
    buffer.append(inbound("a"), "buf-1")
    with pytest.raises(ValueError, match="already buffered"):
        buffer.append(inbound("b"), "buf-1")
    with pytest.raises(ValueError, match="non-empty"):
        buffer.append(inbound("b"), "")


# -- relevance gate ---------------------------------------------------------------------------


def group_event(chat_id: str = "c-general", **extra: object) -> MessageEvent:
    source = SessionSource(platform="discord", chat_id=chat_id, chat_type="group", **extra)  # type: ignore[arg-type]
    return MessageEvent(text="x", source=source)


def test_no_policy_admits_everything():
    assert admit(None, group_event(), addressed=False, from_bot=True) is None


def test_require_address_with_free_response_scopes():
    policy = RelevancePolicy(require_address=True, free_response_scopes=("c-help",))
    assert admit(policy, group_event(), addressed=True, from_bot=False) is None
    assert admit(policy, group_event(), addressed=False, from_bot=False) is not None
    assert admit(policy, group_event("c-help"), addressed=False, from_bot=False) is None
    thread = group_event("t1", parent_chat_id="c-help")
    assert admit(policy, thread, addressed=False, from_bot=False) is None
    dm = MessageEvent(source=SessionSource(platform="discord", chat_id="d", chat_type="dm"))
    assert admit(policy, dm, addressed=False, from_bot=True) is None


def test_other_bots_need_allow_other_bots():
    assert admit(RelevancePolicy(), group_event(), addressed=True, from_bot=True) is not None
    allowed = RelevancePolicy(allow_other_bots=True)
    assert admit(allowed, group_event(), addressed=True, from_bot=True) is None


def test_policy_coerce_reads_wire_and_snake_mappings_and_comma_strings():
    wire = {"requireAddress": True, "freeResponseScopes": ["c1", " c2 ", ""], "allowOtherBots": 1}
    assert RelevancePolicy.coerce(wire) == RelevancePolicy(True, ("c1", "c2"), True)
    snake = {"require_address": False, "free_response_scopes": "c1, c2 ,c3"}
    assert RelevancePolicy.coerce(snake) == RelevancePolicy(False, ("c1", "c2", "c3"), False)
    assert RelevancePolicy.coerce(None) is None


# -- outcomes and presets ---------------------------------------------------------------------


def test_one_shot_outcomes_run_before_the_standing_one():
    table = OutcomeTable()
    table.set("send", Fail("down"))
    table.push("send", NoAnswer(), Succeed("m-x"))
    assert [table.take("send") for _ in range(3)] == [NoAnswer(), Succeed("m-x"), Fail("down")]
    assert table.take("edit") == Succeed()
    table.reset()
    assert table.take("send") == Succeed()


def test_unknown_op_is_named():
    with pytest.raises(ValueError, match="unknown outbound op 'post'"):
        OutcomeTable().set("post", Succeed())


def test_fail_result_shape():
    assert Fail("x").result() == {"success": False, "error": "x"}
    assert Fail("x", retryable=True, code="egress_declined").result() == {
        "success": False,
        "error": "x",
        "retryable": True,
        "code": "egress_declined",
    }


def test_presets_and_generic_descriptor():
    assert set(DEFAULT_DESCRIPTORS) == {"discord", "telegram", "relay"}
    generic = generic_descriptor("agentschat")
    assert (generic.platform, generic.max_message_length) == ("agentschat", 4096)
    wire = unstructure(generic)
    assert wire["platform"] == "agentschat"
    assert "platform" not in INVALID_DESCRIPTOR
