"""Policy files: layout, strict validation, durations, resolution (TR §4, T16, T29,
T31-T38, C9-C15, C27)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trust._policy import (
    Policy,
    PolicyError,
    PolicyWarning,
    TrustConfigError,
    load_preset,
    parse_duration,
    resolve_policy,
)


def fm(frontmatter: str, body: str = "") -> str:
    return f"---\n{frontmatter.strip()}\n---\n{body}"


def errors(text: str, name: str = "p") -> list[tuple[int, str, str]]:
    with pytest.raises(PolicyError) as info:
        Policy.from_text(text, name=name)
    return [(i.line, i.key, i.message) for i in info.value.items]


def test_minimal_native_policy_loads_with_defaults() -> None:
    p = Policy.from_text(fm("default: deny"))
    assert p.name == "inline"  # C27
    assert p.default == "deny"
    assert p.fast_rules == ()
    assert p.cache_s == 3600
    assert p.reply_on_deny is None
    assert p.format == "native"
    assert len(p.digest) == 64


def test_C27_name_key_wins_over_default_name() -> None:
    assert Policy.from_text(fm("name: mine\ndefault: deny"), name="other").name == "mine"
    assert Policy.from_text(fm("default: deny"), name="given").name == "given"


def test_from_file_uses_stem_and_digest_of_bytes(tmp_path: Path) -> None:
    path = tmp_path / "team-policy.md"
    data = "\ufeff---\r\ndefault: allow\r\n---\r\nbody text\r\n".encode()
    path.write_bytes(data)
    p = Policy.from_file(path)
    assert p.name == "team-policy"
    assert p.default == "allow"
    assert p.body == "body text"
    import hashlib

    assert p.digest == hashlib.sha256(data).hexdigest()
    assert p.source == str(path)


def test_T31_closing_fence_with_trailing_space_is_unterminated() -> None:
    got = errors("---\ndefault: deny\n--- \nbody\n")
    assert got == [(1, "<frontmatter>", got[0][2])]
    assert "unterminated" in got[0][2]


def test_T31_dashes_inside_yaml_do_not_close_it() -> None:
    p = Policy.from_text(fm("default: allow # a---b\nreply_on_deny: 'x --- y'", "the body"))
    assert p.default == "allow"
    assert p.reply_on_deny == "x --- y"
    assert p.body == "the body"


@pytest.mark.parametrize(
    "text",
    [
        "default: deny\n",  # no opening fence
        " ---\ndefault: deny\n---\n",
        "---\n---\nbody\n",  # empty frontmatter
        "---\n# only a comment\n---\n",
        "---\n- a\n- b\n---\n",  # list frontmatter
        "---\njust text\n---\n",  # scalar frontmatter
    ],
)
def test_T32_missing_fence_empty_or_non_mapping_frontmatter(text: str) -> None:
    got = errors(text)
    assert len(got) == 1
    assert got[0][:2] == (1, "<frontmatter>")  # C9


def test_T33_duplicate_key_fails_naming_its_line() -> None:
    got = errors(fm("default: deny\ncache: 1h\ndefault: allow"))
    assert got == [(4, "default", "duplicate key 'default' (first on line 2)")]
    nested = errors(fm("fast_rules:\n  - if: is_admin\n    action: allow\n    action: deny"))
    assert nested[0][:2] == (5, "fast_rules[0].action")


def test_T33_yaml_syntax_error_names_its_line() -> None:
    got = errors(fm("default: deny\nfast_rules: [\n  {if: x"))
    assert got[0][0] >= 3
    assert "invalid YAML" in got[0][2]


@pytest.mark.parametrize("value", ["24", "1.5h", "1w", "-1h", "31d", "true", "'1 h'", "0m"])
def test_T35_bad_durations_fail(value: str) -> None:
    got = errors(fm(f"default: deny\ncache: {value}"))
    assert got[0][:2] == (3, "cache")
    assert "duration" in got[0][2]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0), ("'0'", 0), ("0s", 0), ("90s", 90), ("24h", 86400), ("30d", 2592000), ("1s", 1)],
)
def test_T35_good_durations_load(value: str, seconds: int) -> None:
    assert Policy.from_text(fm(f"default: deny\ncache: {value}")).cache_s == seconds


def test_C10_zero_forms_mean_no_caching() -> None:
    assert parse_duration(0) == parse_duration("0") == parse_duration("0s") == 0


def test_T36_three_errors_all_reported_with_file_line_key() -> None:
    text = fm(
        """
name: Bad Name
fast_rules:
  - {if: is_admin, action: allow}
  - {if: is_vip, action: allow}
  - {if: is_stranger, action: deny, on_success: allow}
cache: 2w
"""
    )
    with pytest.raises(PolicyError) as info:
        Policy.from_text(text, source="team.md")
    items = info.value.items
    keys = {(i.line, i.key) for i in items}
    assert keys == {
        (2, "name"),
        (5, "fast_rules[1].if"),
        (6, "fast_rules[2].on_success"),
        (7, "cache"),
    }
    assert all(i.file == "team.md" for i in items)
    text_out = str(info.value)
    assert "4 problems" in text_out
    assert "team.md:5: fast_rules[1].if: unknown condition 'is_vip'" in text_out


@pytest.mark.parametrize(
    ("frontmatter", "key"),
    [
        ("fast_rules: allow", "fast_rules"),
        ("agent_tools: block\ndefault: use_agent", "agent_tools"),
        ("disable: promote", "disable"),
        ("use_agent: always", "use_agent"),
    ],
)
def test_T37_scalar_where_list_required(frontmatter: str, key: str) -> None:
    got = errors(fm(frontmatter, "body"))
    assert (2, key) in {g[:2] for g in got}
    assert any("must be a list" in g[2] for g in got)


def test_T38_yaml_boolean_default_hints_quotes() -> None:
    got = errors(fm("default: yes"))
    assert got[0][:2] == (2, "default")
    assert "'yes'" in got[0][2]
    assert "boolean" in got[0][2]
    assert "quotes" in got[0][2]
    on = errors(fm("fast_rules:\n  - {if: always, action: on}"))
    assert "boolean" in on[0][2]


@pytest.mark.parametrize("action", ["unblock", "set_admin", "remove_admin"])
def test_T16_unblock_and_admin_changes_are_not_rule_actions(action: str) -> None:
    got = errors(fm(f"fast_rules:\n  - {{if: always, action: {action}}}"))
    assert got[0][:2] == (3, "fast_rules[0].action")
    assert "never" in got[0][2]
    follow = errors(
        fm(
            f"fast_rules:\n  - {{if: is_contact, action: promote_to_whitelist, on_success: {action}}}"
        )
    )
    assert follow[0][1] == "fast_rules[0].on_success"


def test_unknown_keys_counters_operators_tools() -> None:
    text = fm(
        """
fast_rules:
  - {if: "requests => 3", action: allow}
  - {if: "karma > 3", action: allow}
  - {if: "requests > 2000000000", action: allow}
  - {if: always, action: allow, note: x}
agent_tools: [get_level, shell]
colour: red
default: use_agent
""",
        "prompt",
    )
    got = {(line, key) for line, key, _ in errors(text)}
    assert got == {
        (3, "fast_rules[0].if"),
        (4, "fast_rules[1].if"),
        (5, "fast_rules[2].if"),
        (6, "fast_rules[3].note"),
        (7, "agent_tools[1]"),
        (8, "colour"),
    }


def test_C15_counters_with_optional_whitespace() -> None:
    a = Policy.from_text(fm("fast_rules:\n  - {if: 'requests>10', action: deny}"))
    b = Policy.from_text(fm("fast_rules:\n  - {if: 'requests  >  10', action: deny}"))
    assert a.fast_rules[0].conditions[0].text == b.fast_rules[0].conditions[0].text
    assert a.fast_rules[0].conditions[0].text == "requests > 10"


def test_T34_follow_up_defaults_fail_closed() -> None:
    p = Policy.from_text(
        fm(
            """
fast_rules:
  - {if: has_invite_code, action: verify_invite}
  - {if: is_contact, action: promote_to_whitelist}
  - {if: is_stranger, action: block}
  - {if: is_whitelist, action: demote_to_contact}
"""
        )
    )
    got = [(r.on_success, r.on_failure) for r in p.fast_rules]
    assert got == [("allow", "deny"), ("allow", "deny"), ("deny", "deny"), ("deny", "deny")]


def test_follow_ups_on_terminal_actions_fail() -> None:
    got = errors(fm("fast_rules:\n  - {if: always, action: allow, on_failure: deny}"))
    assert got[0][1] == "fast_rules[0].on_failure"


def test_rule_missing_if_or_action_and_empty_condition_list() -> None:
    got = errors(fm("fast_rules:\n  - {action: allow}\n  - {if: []  , action: deny}\n  - x"))
    assert {(g[0], g[1]) for g in got} == {
        (3, "fast_rules[0]"),
        (4, "fast_rules[1].if"),
        (5, "fast_rules[2]"),
    }


def test_C9_verify_payment_without_payment_names_payment() -> None:
    got = errors(fm("fast_rules:\n  - {if: has_payment, action: verify_payment}"))
    assert got[0][1] == "payment"
    unused = errors(fm("payment: {amount: 5}\ndefault: deny"))
    assert unused[0][1] == "payment"
    bad = errors(
        fm(
            "fast_rules:\n  - {if: has_payment, action: verify_payment}\n"
            "payment: {amount: -1, currency: usd}"
        )
    )
    assert {g[1] for g in bad} == {"payment.amount", "payment.currency"}
    ok = Policy.from_text(
        fm(
            "fast_rules:\n  - {if: has_payment, action: verify_payment}\n"
            "payment: {amount: 2.50, currency: EUR}"
        )
    )
    assert ok.payment is not None
    assert str(ok.payment.amount) == "2.5"
    assert ok.payment.currency == "EUR"


def test_C9_empty_body_with_agent_use_names_body() -> None:
    got = errors(fm("default: use_agent"))
    assert got == [(4, "<body>", got[0][2])]
    trig = errors(fm("use_agent:\n  - {when: always}"))
    assert trig[0][1] == "<body>"
    assert Policy.from_text(fm("default: use_agent", "Judge.")).body == "Judge."


def test_C9_native_keys_mixed_with_065_keys_name_the_first_065_key() -> None:
    got = errors(fm("fast_rules: []\nallow: [contact]\ndeny: [blocked]"))
    assert got[0][:2] == (3, "allow")
    assert "0.6.5" in got[0][2]


def test_C13_disable_unknown_is_error_unused_verify_is_warning() -> None:
    got = errors(fm("disable: [promote, nuke]"))
    assert got[0][1] == "disable[1]"
    p = Policy.from_text(fm("disable: [verify/invite, block]"))
    assert p.disable == frozenset({"verify/invite", "block"})
    assert any(isinstance(w, PolicyWarning) and w.key == "disable" for w in p.warnings)
    assert "block" not in p.enabled_operations()
    assert "verify/invite" not in p.enabled_operations()


def test_warnings_unreachable_and_redundant_is_blocked() -> None:
    p = Policy.from_text(
        fm(
            "fast_rules:\n  - {if: is_blocked, action: deny}\n  - {if: always, action: deny}\n"
            "  - {if: is_admin, action: allow}"
        )
    )
    msgs = {(w.line, w.key): w.message for w in p.warnings}
    assert "redundant" in msgs[(3, "fast_rules[0].if")]
    assert "unreachable" in msgs[(5, "fast_rules[2]")]


def test_reply_on_deny_and_name_limits() -> None:
    assert Policy.from_text(fm("reply_on_deny: 'Not here.'")).reply_on_deny == "Not here."
    got = errors(fm(f"reply_on_deny: {'x' * 501}\nname: {'a' * 41}"))
    assert {g[1] for g in got} == {"reply_on_deny", "name"}
    long_reason = errors(fm(f"fast_rules:\n  - {{if: always, action: deny, reason: {'r' * 201}}}"))
    assert long_reason[0][1] == "fast_rules[0].reason"


def test_describe_rules_lists_compiled_rules_in_order() -> None:
    lines = load_preset("careful").describe_rules()
    assert lines[0] == "#0 if is_admin: allow"
    assert lines[3].startswith("#3 if has_invite_code: verify_invite")
    assert lines[-1].startswith("use_agent when is_stranger and requests > 10")


# --- resolution (§4.1) -------------------------------------------------------------------


def test_resolution_level_0_and_1() -> None:
    assert resolve_policy(None).name == "careful"
    assert resolve_policy("STRICT").name == "strict"
    assert resolve_policy(" Open ").name == "open"


def test_resolution_level_2_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.md"
    path.write_text(fm("name: mine\ndefault: allow"))
    assert resolve_policy(str(path)).name == "mine"
    bad = tmp_path / "bad.md"
    bad.write_text("default: allow\n")
    with pytest.raises(PolicyError):
        resolve_policy(str(bad))


@pytest.mark.parametrize(
    "value",
    ["I trust requests that come from my team", "careful2", "", "---\ndefault: allow\n---\n"],
)
def test_T29_neither_preset_nor_file_is_config_error(value: str) -> None:
    with pytest.raises(TrustConfigError) as info:
        resolve_policy(value)
    assert "neither a preset" in str(info.value)


def test_T29_directory_is_not_a_policy(tmp_path: Path) -> None:
    with pytest.raises(TrustConfigError):
        resolve_policy(str(tmp_path))


def test_T71_every_example_policy_in_docs_loads() -> None:
    import re

    docs = Path(__file__).resolve().parents[2] / "docs"
    examples = []
    for page in sorted(docs.glob("*.md")):
        examples += [
            (page.name, m) for m in re.findall(r"```policy\n(.*?)```", page.read_text(), re.S)
        ]
    assert len(examples) >= 4
    for page_name, text in examples:
        policy = Policy.from_text(text, source=page_name)
        assert not [w for w in policy.warnings if "unreachable" in w.message], page_name
