"""Channel authentication (RC §5): frozen vectors, expiry, rejection, rotation (R31-R36)."""

from __future__ import annotations

import base64

import pytest

from protocol._auth import (
    UPGRADE_TOKEN_TTL_S,
    make_token,
    make_upgrade_token,
    sign,
    verify_signature,
    verify_token,
)

S = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
SECONDARY = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
V1 = (
    "Z3ctaW5zdGFuY2UtMTowOjM3YWE3YjE0NWU4NzY0ZDQwM2JhOWM2MzlmMjMwZGQ2M2RlOGVkOTliODhm"
    "ZWQzNmFhMDI2MjVhOGE3ZTM1NjQ"
)
V1_TEXT = "gw-instance-1:0:37aa7b145e8764d403ba9c639f230dd63de8ed99b88fed36aa02625a8a7e3564"
V2_BODY = '{"type":"message","event":{"text":"hi","source":{"chat_id":"c1"}}}'
V2_SIG = "ac9509c8dae52b5590f06378260877334ff1adc4b1c96bafa4b514165fae6dc6"
COLON_PAYLOAD = "agent:main:discord:group:chanA:userX"
NOW = 1_750_000_000.0


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def token_from(text: str) -> str:
    """A token made by hand from its decoded text (payload:exp:sig)."""
    return b64url(text)


# -- R31 / R32: the frozen cross-language vectors ---------------------------------------------


def test_R31_v1_token_is_byte_exact() -> None:
    assert make_token("gw-instance-1", S, 0) == V1
    assert make_token("gw-instance-1", S) == V1
    assert base64.urlsafe_b64decode(V1 + "=" * (-len(V1) % 4)).decode() == V1_TEXT


@pytest.mark.parametrize("now", [0.0, NOW, 4_102_444_800.0, None])
def test_R31_v1_verifies_at_any_time(now: float | None) -> None:
    assert verify_token(V1, [S], now=now) == "gw-instance-1"


def test_R31_secret_is_text_not_hex_decoded() -> None:
    as_bytes_key = make_token("gw-instance-1", bytes.fromhex(S).decode("latin-1"), 0)
    assert as_bytes_key != V1
    assert verify_token(as_bytes_key, [S]) is None


def test_R32_v2_signature_is_byte_exact() -> None:
    assert sign("1750000000." + V2_BODY, S) == V2_SIG
    assert sign(("1750000000." + V2_BODY).encode(), S) == V2_SIG
    assert verify_signature("1750000000." + V2_BODY, V2_SIG, [S])
    assert not verify_signature("1750000000." + V2_BODY + " ", V2_SIG, [S])


# -- R33: upgrade token and colon payloads ----------------------------------------------------


def test_R33_upgrade_token_is_a_300s_token() -> None:
    assert UPGRADE_TOKEN_TTL_S == 300
    assert make_upgrade_token("gw-1", S, now=NOW) == make_token("gw-1", S, 300, now=NOW)
    text = base64.urlsafe_b64decode(make_upgrade_token("gw-1", S, now=NOW) + "==").decode()
    assert text.split(":")[1] == str(int(NOW) + 300)


def test_R33_upgrade_token_expires_after_300s() -> None:
    token = make_upgrade_token("gw-1", S, now=NOW)
    assert verify_token(token, [S], now=NOW + 300) == "gw-1"
    assert verify_token(token, [S], now=NOW + 300.001) is None


def test_R33_colon_payload_round_trips() -> None:
    token = make_token(COLON_PAYLOAD, S, 60, now=NOW)
    assert verify_token(token, [S], now=NOW) == COLON_PAYLOAD
    forever = make_token(COLON_PAYLOAD, S)
    assert verify_token(forever, [S], now=NOW) == COLON_PAYLOAD


def test_R33_non_ascii_payload_round_trips() -> None:
    payload = "gw-é-😀:x"
    assert verify_token(make_token(payload, S, now=NOW), [S], now=NOW) == payload


def test_R33_now_is_truncated_to_whole_seconds() -> None:
    assert make_token("p", S, 10, now=NOW + 0.9) == make_token("p", S, 10, now=NOW)


def test_R33_default_now_is_the_wall_clock() -> None:
    token = make_upgrade_token("gw-1", S)
    assert verify_token(token, [S]) == "gw-1"


# -- R34: expiry ------------------------------------------------------------------------------


def test_R34_expired_p1_token_is_rejected() -> None:
    signed = "p:1"
    expired = token_from(f"{signed}:{sign(signed, S)}")
    assert verify_token(expired, [S], now=NOW) is None
    assert verify_token(expired, [S]) is None
    # Same token is fine at and before its expiry second.
    assert verify_token(expired, [S], now=1.0) == "p"
    assert verify_token(expired, [S], now=0.5) == "p"


def test_R34_fresh_ttl1_token_and_now_equal_exp_are_accepted() -> None:
    token = make_token("p", S, 1, now=NOW)
    assert verify_token(token, [S], now=NOW) == "p"
    assert verify_token(token, [S], now=NOW + 1) == "p"  # now == exp
    assert verify_token(token, [S], now=NOW + 1.5) is None


@pytest.mark.parametrize("ttl", [0, -5])
def test_R34_non_positive_ttl_never_expires(ttl: int) -> None:
    token = make_token("p", S, ttl, now=NOW)
    assert token == make_token("p", S, 0)
    assert verify_token(token, [S], now=1e12) == "p"


# -- R35: rejection ---------------------------------------------------------------------------


def test_R35_wrong_secret_is_rejected() -> None:
    assert verify_token(V1, [SECONDARY]) is None
    assert verify_token(V1, ["s"]) is None
    assert not verify_signature("1750000000." + V2_BODY, V2_SIG, [SECONDARY])


@pytest.mark.parametrize(
    "token",
    [
        "not-base64url!!!",
        "",
        "Z3ctaW5zdGFuY2UtMTowOjM3YWE3YjE0NWU4NzY0ZDQwM2JhOWM2MzlmMjMwZGQ2M2RlOGVkOTliODhm=",
        V1 + "=",
        V1 + "\n",
        " " + V1,
        V1.replace("Z", "+", 1),
        V1 + "A",  # length 1 mod 4: not base64 at all
    ],
)
def test_R35_garbage_tokens_are_rejected(token: str) -> None:
    assert verify_token(token, [S]) is None


def test_R35_non_canonical_base64_is_rejected() -> None:
    # "cDoxOj" + "B" sets padding bits a canonical encoder leaves at zero.
    canonical = b64url("p:0:" + sign("p:0", S))
    assert verify_token(canonical, [S]) == "p"
    last = canonical[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twins = [
        canonical[:-1] + c
        for c in alphabet
        if c != last
        and base64.urlsafe_b64decode(canonical[:-1] + c + "=" * (-len(canonical) % 4))
        == base64.urlsafe_b64decode(canonical + "=" * (-len(canonical) % 4))
    ]
    assert twins, "expected padding-bit twins of the token"
    for twin in twins:
        assert verify_token(twin, [S]) is None


@pytest.mark.parametrize(
    "sig",
    [
        "zz" * 32,  # not hex
        V2_SIG[:-2],  # 31 bytes
        V2_SIG + "00",  # 33 bytes
        "",
        " " + V2_SIG[1:],
        V2_SIG[:30] + " " + V2_SIG[31:],  # bytes.fromhex would skip spaces
    ],
)
def test_R35_bad_hex_signatures_are_rejected(sig: str) -> None:
    assert not verify_signature("1750000000." + V2_BODY, sig, [S])
    assert verify_token(token_from(f"p:0:{sig}"), [S]) is None


def test_R35_uppercase_hex_is_the_same_digest() -> None:
    assert verify_signature("1750000000." + V2_BODY, V2_SIG.upper(), [S])


@pytest.mark.parametrize(
    ("text", "signed"),
    [
        ("p:0", "p"),  # two parts
        (":0:{sig}", ":0"),  # empty payload
        ("p:01:{sig}", "p:1"),  # leading zero; int() would read 1
        ("p:+1:{sig}", "p:1"),
        ("p: 1:{sig}", "p:1"),
        ("p:1 :{sig}", "p:1"),
        ("p:\u0661:{sig}", "p:1"),  # ARABIC-INDIC DIGIT ONE; int() would read 1
        ("p:1.0:{sig}", "p:1.0"),
        ("p::{sig}", "p:"),
    ],
)
def test_R35_malformed_token_texts_are_rejected(text: str, signed: str) -> None:
    # Each is signed over what a lax parser would check, so only the strict rule rejects it.
    token = token_from(text.format(sig=sign(signed, S)))
    assert verify_token(token, [S], now=0.0) is None


def test_R35_invalid_utf8_is_rejected() -> None:
    raw = b"p\xff:0:" + sign(b"p\xff:0", S).encode()
    token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert verify_token(token, [S]) is None


def test_R35_tampered_payload_or_exp_is_rejected() -> None:
    token = make_token("gw-1", S, 60, now=NOW)
    payload, exp, sig = base64.urlsafe_b64decode(token + "==").decode().split(":")
    assert payload == "gw-1"
    assert verify_token(token_from(f"gw-2:{exp}:{sig}"), [S], now=NOW) is None
    assert verify_token(token_from(f"gw-1:{int(exp) + 1}:{sig}"), [S], now=NOW) is None
    assert verify_token(token_from(f"gw-1:0:{sig}"), [S], now=NOW) is None


def test_R35_no_usable_secret_verifies_nothing() -> None:
    assert verify_token(V1, []) is None
    assert verify_token(V1, ["", ""]) is None
    assert not verify_signature("x", sign("x", S), [])


def test_R35_a_bare_string_is_not_a_secret_list() -> None:
    with pytest.raises(TypeError, match="list of secret strings"):
        verify_token(V1, S)
    with pytest.raises(TypeError, match="must be a string"):
        verify_token(V1, [S.encode()])  # type: ignore[list-item]


def test_R35_making_a_token_needs_payload_and_secret() -> None:
    with pytest.raises(ValueError, match="payload"):
        make_token("", S)
    with pytest.raises(ValueError, match="secret"):
        make_token("p", "")


# -- R36: rotation ----------------------------------------------------------------------------


def test_R36_secondary_signed_token_needs_the_rotation_list() -> None:
    token = make_token("gw-instance-1", SECONDARY, 60, now=NOW)
    assert verify_token(token, [S, SECONDARY], now=NOW) == "gw-instance-1"
    assert verify_token(token, [S], now=NOW) is None
    assert verify_token(V1, [S, SECONDARY]) == "gw-instance-1"


def test_R36_empty_secrets_in_the_list_are_skipped() -> None:
    token = make_token("gw-instance-1", SECONDARY, now=NOW)
    assert verify_token(token, ["", S, "", SECONDARY], now=NOW) == "gw-instance-1"
    assert verify_token(token, iter([S, SECONDARY]), now=NOW) == "gw-instance-1"


def test_R35_expiry_too_long_to_be_a_time_is_rejected_without_raising() -> None:
    # CPython refuses int() of > 4300 digits; a hostile token must not reach that.
    huge = (
        base64.urlsafe_b64encode(("gw:" + "1" * 5000 + ":" + "a" * 64).encode())
        .decode()
        .rstrip("=")
    )
    assert verify_token(huge, [S]) is None
    twenty = base64.urlsafe_b64encode(("gw:" + "1" * 20 + ":" + "a" * 64).encode()).decode()
    assert verify_token(twenty.rstrip("="), [S]) is None
