"""relay_runtime._logs: one line per event, key=value or JSON, and no secret survives (R39)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from protocol import make_upgrade_token
from relay_runtime import _logs as logs
from relay_runtime._logs import HIDDEN, configure_logging, mask_text, register_secret, reset_logging
from relay_runtime.testing import open_harness

SECRET = "gw-secret-" + "q" * 30
DELIVERY_KEY = "dk-" + "z" * 29


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("kv", "debug", stream=out, secrets=[SECRET, DELIVERY_KEY])
    yield out
    reset_logging()


def test_R39_registered_secrets_are_masked_in_message_args_extras_and_tracebacks(
    stream: io.StringIO,
) -> None:
    log = logging.getLogger("relay_runtime.test")
    log.info("dialing with %s", SECRET)
    log.warning("delivery key is %r", DELIVERY_KEY, extra={"key_copy": DELIVERY_KEY})
    try:
        raise ValueError(f"bad secret {SECRET}")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert SECRET not in text and DELIVERY_KEY not in text
    assert text.count(HIDDEN) >= 4
    assert "ValueError: bad secret <hidden>" in text


def test_R39_the_record_itself_is_masked_for_later_handlers(
    stream: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("relay_runtime.test").info("token %s", SECRET)
    assert [r.getMessage() for r in caplog.records] == [f"token {HIDDEN}"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.DEF-123_x", "Authorization: Bearer <hidden>"),
        ("secret=hunter2hunter2 next", "secret=<hidden> next"),
        ("GATEWAY_RELAY_SECRET=abc123xyz", "GATEWAY_RELAY_SECRET=<hidden>"),
        ("deliveryKey=k1k2k3, more", "deliveryKey=<hidden>, more"),
        ('{"secret": "s3cr3t!", "ok": 1}', '{"secret": "<hidden>", "ok": 1}'),
        ("{'deliveryKey': 'dk-1'}", "{'deliveryKey': '<hidden>'}"),
        ('api_key="sk-abc def"', "api_key=<hidden>"),
        ("using sk-ABCDEFGHIJKLMNOPQRSTUV", "using <hidden>"),
        ("/invite ABCD-EFGH-JKMN-PQRS please", "/invite <hidden> please"),
        ("code ABCD-EFGH-JKMN-PQRS issued", "code <hidden> issued"),
        ("token_ttl_s=300 tokens=5", "token_ttl_s=300 tokens=5"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_R39_credential_shapes_are_masked(text: str, expected: str) -> None:
    assert mask_text(text) == expected


def test_R39_relay_hmac_tokens_are_recognised_anywhere() -> None:
    token = make_upgrade_token("gw-1", SECRET, now=1_750_000_000)
    assert mask_text(f"upgrade {token} sent") == f"upgrade {HIDDEN} sent"
    long_word = "x" * 80
    assert mask_text(long_word) == long_word


def test_short_values_are_not_registered_as_secrets() -> None:
    try:
        register_secret("ab")
        register_secret(None)
        assert mask_text("ab cab") == "ab cab"
    finally:
        reset_logging()


def test_key_value_format_is_one_line_per_event(stream: io.StringIO) -> None:
    logging.getLogger("relay_runtime.test").info(
        'two\nlines "quoted"', extra={"state": "ready", "count": 3}
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("ts=")
    assert " level=INFO logger=relay_runtime.test " in line
    assert 'msg="two\\nlines \\"quoted\\""' in line
    assert line.endswith("state=ready count=3")


def test_json_format() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        log = logging.getLogger("relay_runtime.test")
        log.debug("not shown")
        log.info("ready", extra={"platforms": "relay", "secret": "abcdefgh"})
    finally:
        reset_logging()
    (line,) = out.getvalue().splitlines()
    data = json.loads(line)
    assert data["level"] == "INFO"
    assert data["msg"] == "ready"
    assert data["platforms"] == "relay"
    assert data["secret"] == HIDDEN


def test_json_lines_stay_valid_json_around_masked_values() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        log = logging.getLogger("relay_runtime.test")
        log.info('connect secret=abc123 token="q r" {"apiKey": "k"}')
    finally:
        reset_logging()
    data = json.loads(out.getvalue())
    assert data["msg"] == 'connect secret=<hidden> token=<hidden> {"apiKey": "<hidden>"}'


def test_configure_logging_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    try:
        first = configure_logging("kv", "info", stream=io.StringIO())
        second = configure_logging("json", "warning", stream=io.StringIO())
        assert first not in root.handlers and second in root.handlers
        assert [h for h in root.handlers if type(h) is type(second)] == [second]
        assert other in root.handlers
        assert root.level == logging.WARNING
        with pytest.raises(ValueError, match="log format"):
            configure_logging("xml", "info")  # type: ignore[arg-type]
    finally:
        root.removeHandler(other)
        reset_logging()


def test_reset_logging_undoes_configure_logging() -> None:
    root = logging.getLogger()
    handler = configure_logging("kv", "debug", stream=io.StringIO(), secrets=[SECRET])
    assert handler in root.handlers and mask_text(SECRET) == HIDDEN
    reset_logging()
    assert handler not in root.handlers
    assert root.level == logging.WARNING
    assert mask_text(SECRET) == SECRET  # registered secrets are forgotten


async def test_R39_a_whole_gateway_session_at_debug_leaks_no_secret_or_token() -> None:
    out = io.StringIO()
    configure_logging("kv", "debug", stream=out)
    try:
        async with open_harness(
            _echo, delivery_key="dk-" + "w" * 40, identity_token="idtok-" + "v" * 30
        ) as harness:
            config = harness.gateway.config
            for value in (config.secret, config.delivery_key, config.identity_token):
                register_secret(value)
            await harness.say("hello", user="telegram:1")
            await harness.drop()
            await harness.say("again", user="telegram:1")
            secret, delivery_key = config.secret, config.delivery_key
    finally:
        reset_logging()
    text = out.getvalue()
    assert "hello" in text or "relay" in text  # the session did log
    assert secret is not None and secret not in text
    assert delivery_key is not None and delivery_key not in text
    for word in text.split():
        candidate = word.split("=", 1)[-1].strip('"')
        assert not logs.is_relay_token(candidate), word


async def _echo(turn: object) -> str:
    return str(getattr(turn, "text", ""))
