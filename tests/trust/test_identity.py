"""Identity checklist T1-T8 (TR §1, C1-C8)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trust._identity import (
    ANONYMOUS,
    BUILTIN_RULES,
    Canonicalizer,
    InvalidClientId,
    canonical_platform,
    identify,
    parse_client_id,
    parse_platform_list,
)

CO_HEX = "ab" * 32


def test_T1_client_id_prefers_user_id_alt() -> None:
    both = identify("discord", "42", "77")
    assert both.primary == "discord:77"
    assert both.secondary == "discord:42"
    only = identify("discord", "42")
    assert only.primary == "discord:42"
    assert only.secondary is None


def test_T1_platform_is_raw_platform_not_relay_fallback() -> None:
    assert identify("myplat", "u1").primary == "myplat:u1"
    assert identify("  MyPlat ", "u1").primary == "myplat:u1"


def test_T2_no_casefold_without_platform_rule() -> None:
    assert parse_client_id("x:Ab") != parse_client_id("x:ab")
    folded = Canonicalizer(casefold_platforms=parse_platform_list("x, Y"))
    assert folded.parse("x:Ab") == folded.parse("x:ab") == "x:ab"
    assert folded.parse("y:ÄB") == "y:äb"
    assert folded.parse("z:Ab") == "z:Ab"


@pytest.mark.parametrize(
    ("platform", "raw", "canon"),
    [
        ("discord", " 000123 ", "123"),
        ("discord", "000", "0"),
        ("discord", "0" * 5 + "1" * 20, "1" * 20),
        ("telegram", "-0", "0"),
        ("telegram", "-00042", "-42"),
        ("slack", "u01abc", "U01ABC"),
        ("signal", "1B4E28BA-2FA1-11D2-883F-0016D3CCA427", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
        ("signal", "+1 (555) 123-4567", "+15551234567"),
        ("signal", "49 30 1234567", "+49301234567"),
        ("whatsapp", "+49 (30) 123-45@s.whatsapp.net", "493012345"),
        ("whatsapp", "4930123456@c.us", "4930123456"),
        ("co", "0X" + CO_HEX.upper(), "0x" + CO_HEX),
        ("co", CO_HEX, "0x" + CO_HEX),
        ("x", "  Café\u0301 ", "Café\u0301".replace("e\u0301", "é")),
    ],
)
def test_T3_builtin_rules_canonicalize_idempotently(platform: str, raw: str, canon: str) -> None:
    c = Canonicalizer()
    once = c.user_id(platform, raw)
    assert once == canon
    assert c.user_id(platform, once) == once


@pytest.mark.parametrize(
    ("platform", "raw"),
    [
        ("discord", "12a"),
        ("discord", "1" * 21),
        ("discord", "١٢٣"),  # non-ASCII digits
        ("telegram", "--1"),
        ("telegram", "+5"),
        ("slack", "U-1"),
        ("signal", "1234567"),
        ("signal", "1234567890123456"),
        ("signal", "abc"),
        ("whatsapp", "1234"),
        ("whatsapp", "1" * 21),
        ("co", "0x" + "ab" * 31),
        ("co", "0x" + "g" * 64),
        ("x", ""),
        ("x", "   "),
        ("x", "a\u200bb"),
        ("x", "a b"),
        ("x", "a\x00"),
        ("x", "\ue000"),
        ("x", "a" * 257),
    ],
)
def test_T3_invalid_ids_are_rejected(platform: str, raw: str) -> None:
    with pytest.raises(InvalidClientId) as info:
        Canonicalizer().user_id(platform, raw)
    assert info.value.code == "invalid_client_id"


@given(
    platform=st.sampled_from([*BUILTIN_RULES, "x", "folded"]),
    raw=st.text(max_size=70)
    | st.from_regex(r"[-+0 ()]{0,3}[0-9]{1,22}(@c\.us)?", fullmatch=True)
    | st.from_regex(r"(0[xX])?[0-9a-fA-F]{64}", fullmatch=True),
)
def test_T3_canonicalizing_twice_equals_once(platform: str, raw: str) -> None:
    c = Canonicalizer(casefold_platforms=frozenset({"folded"}))
    try:
        once = c.user_id(platform, raw)
    except InvalidClientId:
        return
    assert c.user_id(platform, once) == once


def test_T4_ids_compare_exactly_star_is_literal() -> None:
    blocked = {parse_client_id("x:*"), parse_client_id("x:trusted-*")}
    for candidate in ("x:anyone", "x:trusted-bob", "x:un-trusted-hacker", "y:*"):
        assert parse_client_id(candidate) not in blocked
    assert parse_client_id("x:*") in blocked
    with pytest.raises(InvalidClientId):
        parse_client_id("discord:*")


def test_T5_non_canonical_stored_ids_are_named() -> None:
    c = Canonicalizer()
    stored = ["discord:123", "discord:0123", "co:0x" + CO_HEX.upper(), "x:ok", "nocolon"]
    assert c.non_canonical(stored) == stored[1:2] + stored[2:3] + ["nocolon"]
    folded = Canonicalizer(casefold_platforms=frozenset({"x"}))
    assert folded.non_canonical(["x:OK", "x:ok"]) == ["x:OK"]


@pytest.mark.parametrize("typed", ["nocolon", ":123", "discord:", "Dis cord:1", "9x:1", ""])
def test_T6_typed_id_without_valid_parts_is_invalid_client_id(typed: str) -> None:
    with pytest.raises(InvalidClientId) as info:
        parse_client_id(typed)
    assert info.value.code == "invalid_client_id"
    assert "invalid" in str(info.value)


def test_T7_respellings_are_one_client() -> None:
    assert parse_client_id("Discord: 0123") == "discord:123"
    assert identify("discord", "123").primary == parse_client_id("discord:0123")
    assert parse_client_id("co:0x" + CO_HEX.upper()) == parse_client_id("co:" + CO_HEX)
    assert parse_client_id("co:" + CO_HEX) == "co:0x" + CO_HEX
    # only the first colon splits
    assert parse_client_id("x:a:b") == "x:a:b"


@pytest.mark.parametrize(
    ("platform", "user_id", "alt"),
    [
        ("discord", None, None),
        ("discord", "", None),
        ("x", "bob\u200b", None),
        ("discord", "12a", None),
        ("", "123", None),
        (None, "123", None),
        ("9bad", "123", None),
        ("discord", "123", "bad!"),  # invalid alt: no fallback to user_id
    ],
)
def test_T8_missing_or_invalid_id_is_anonymous(
    platform: str | None, user_id: str | None, alt: str | None
) -> None:
    who = identify(platform, user_id, alt)
    assert who.primary == ANONYMOUS
    assert who.is_anonymous
    assert who.secondary is None
    assert who.warning


def test_C6_valid_alt_with_invalid_user_id_has_no_secondary() -> None:
    who = identify("discord", "not-digits", "77")
    assert who.primary == "discord:77"
    assert who.secondary is None
    assert who.warning is not None
    assert "user_id" in who.warning


def test_same_primary_and_secondary_collapse() -> None:
    assert identify("discord", "077", "77").secondary is None


def test_platform_rule_and_operator_rules() -> None:
    assert canonical_platform("\tTELEGRAM \n") == "telegram"
    with pytest.raises(InvalidClientId):
        canonical_platform("a" * 33)
    custom = Canonicalizer(rules={"x": lambda uid: uid.removeprefix("@")})
    assert custom.parse("x:@bob") == "x:bob"
    with pytest.raises(InvalidClientId):
        Canonicalizer().user_id("x", 12)  # type: ignore[arg-type]
