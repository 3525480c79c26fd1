"""RC §9 URL derivation (R76)."""

from __future__ import annotations

import pytest

from protocol._urls import control_base, control_url, dial_url, http_url_problem, relay_url_problem

# The RC §9 table: configured -> (dial, provision).
TABLE = [
    ("https://connector.example", "wss://connector.example/relay",
     "https://connector.example/relay/provision"),
    ("http://connector.local:8080", "ws://connector.local:8080/relay",
     "http://connector.local:8080/relay/provision"),
    ("wss://c.example/relay", "wss://c.example/relay", "https://c.example/relay/provision"),
    ("https://c.example/relay/", "wss://c.example/relay", "https://c.example/relay/provision"),
    ("ws://127.0.0.1:9", "ws://127.0.0.1:9/relay", "http://127.0.0.1:9/relay/provision"),
]  # fmt: skip


@pytest.mark.parametrize(("configured", "dial", "provision"), TABLE)
def test_R76_url_derivation_reproduces_the_table(
    configured: str, dial: str, provision: str
) -> None:
    assert dial_url(configured) == dial
    assert control_url(configured, "provision") == provision


def test_R76_control_url_strips_whitespace_and_only_one_relay_suffix() -> None:
    assert control_url("  wss://c.example/relay//  ", "policy") == "https://c.example/relay/policy"
    assert control_base("https://c.example/relay/relay") == "https://c.example/relay"
    assert control_url("https://c.example/base", "enroll") == "https://c.example/base/relay/enroll"
    assert control_url("https://c.example", "/other") == "https://c.example/other"


def test_R76_schemes_are_case_insensitive() -> None:
    assert dial_url("HTTPS://c.example") == "wss://c.example/relay"
    assert control_base("WSS://c.example/relay") == "https://c.example"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://c.example", "scheme"),
        ("c.example", "scheme"),
        ("https://", "no host"),
        ("https://c.example/?a=1", "query"),
        ("https://c.example/#top", "fragment"),
        ("https://c.example:99999", "not a valid URL"),
    ],
)
def test_relay_url_problem_names_the_problem(url: str, problem: str) -> None:
    found = relay_url_problem(url)
    assert found is not None
    assert problem in found


def test_relay_and_http_url_acceptance() -> None:
    assert relay_url_problem("wss://c.example/relay") is None
    assert relay_url_problem("http://127.0.0.1:8080") is None
    assert http_url_problem("https://wake.example/poke") is None
    assert http_url_problem("ws://wake.example") is not None
