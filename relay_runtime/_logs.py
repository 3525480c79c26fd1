"""Structured logging for the launcher: one line per event on stderr, secrets masked (R39).

Two formats share one record shape — time, level, logger, message, then any ``extra=``
fields the caller attached:

* ``kv`` (the default): ``ts=2026-01-02T03:04:05.678Z level=INFO logger=relay_runtime.cli
  msg="gateway ready" state=ready``; values with spaces, quotes or ``=`` are quoted, and
  newlines are escaped so an event never spans two lines.
* ``json``: the same fields as one JSON object per line.

:class:`SecretFilter` runs before either formatter and rewrites the record itself (message,
arguments, extras and exception text), so every handler behind it — and any handler added
later to the same record's path — sees only the masked text. It hides values it was told
about (:func:`register_secret`: the gateway secret, the delivery key, API keys) and anything
that looks like a credential: ``Bearer …`` values, ``secret=…``/``token=…``/``api_key=…``
style pairs (also in JSON and Python reprs), relay HMAC tokens, ``sk-…`` API keys and
invite codes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Final, Literal, TextIO

HIDDEN: Final = "<hidden>"
LOG_FORMATS: Final = ("kv", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
LogFormat = Literal["kv", "json"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

# A key whose value is a credential, in any of the spellings our code and its peers use.
_SECRET_KEY: Final = (
    r"[A-Za-z0-9_.-]*(?:secret|token|api[_-]?key|apikey|password|passwd|"
    r"delivery[_-]?key|deliverykey|authorization|invite[_-]?code)"
)
_SECRET_KEY_RE: Final = re.compile(rf"(?i)^{_SECRET_KEY}$")
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # Authorization: Bearer <value>
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=:-]+"), rf"\g<1>{HIDDEN}"),
    # "secret": "value" (JSON) and 'secret': 'value' (Python repr)
    (
        re.compile(rf"""(?i)(["']{_SECRET_KEY}["']\s*:\s*)(["'])(?:\\.|(?!\2).)*\2"""),
        rf"\g<1>\g<2>{HIDDEN}\g<2>",
    ),
    # secret=value, GATEWAY_RELAY_SECRET=value, deliveryKey=value (quoted or bare)
    (
        re.compile(rf"""(?i)\b({_SECRET_KEY}=)(?:"(?:\\.|[^"])*"|'[^']*'|[^\s"',;&)}}\]]+)"""),
        rf"\g<1>{HIDDEN}",
    ),
    # user:password@ in a URL (scheme://userinfo@host)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@?#\"'<>]+@"), rf"\g<1>{HIDDEN}@"),
    # OpenAI-style API keys
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), HIDDEN),
    # /invite CODE in a logged chat line, and bare invite codes (XXXX-XXXX-XXXX-XXXX)
    (re.compile(r"(?i)(/invite\s+)\S+"), rf"\g<1>{HIDDEN}"),
    (re.compile(r"\b[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}\b"), HIDDEN),
)
# Relay HMAC tokens are base64url("<payload>:<exp>:<64 hex>"); long base64url runs are
# decoded to check, so ordinary long words are left alone.
_B64_RUN: Final = re.compile(r"[A-Za-z0-9_-]{60,}")
_SIGNED_TAIL: Final = re.compile(rb":[0-9]+:[0-9a-f]{64}$")

_known_secrets: set[str] = set()
# Shorter values would mask ordinary words; no credential we hold is this short.
_MIN_SECRET_LEN: Final = 6


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in a log record from now on."""
    if value and len(value) >= _MIN_SECRET_LEN:
        _known_secrets.add(value)


def is_relay_token(candidate: str) -> bool:
    """Whether ``candidate`` is a relay HMAC token (base64url of ``payload:exp:<64 hex>``)."""
    try:
        raw = base64.urlsafe_b64decode(candidate + "=" * (-len(candidate) % 4))
    except (binascii.Error, ValueError):
        return False
    return _SIGNED_TAIL.search(raw) is not None


def mask_text(text: str) -> str:
    """``text`` with every registered secret and credential-looking value replaced."""
    for secret in sorted(_known_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, HIDDEN)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _B64_RUN.sub(
        lambda m: HIDDEN if is_relay_token(m.group(0)) else m.group(0),
        text,
    )


def _mask_value(key: str, value: object) -> object:
    if _SECRET_KEY_RE.match(key) and value is not None:
        return HIDDEN
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return mask_text(repr(value))


class SecretFilter(logging.Filter):
    """Rewrites each record so that no secret, token or delivery key survives (R39)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_relay_masked", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the event
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = mask_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        for key in _extra_keys(record):
            record.__dict__[key] = _mask_value(key, record.__dict__[key])
        record.__dict__["_relay_masked"] = True
        return True


def _extra_keys(record: logging.LogRecord) -> list[str]:
    return [k for k in record.__dict__ if k not in _STANDARD_ATTRS and not k.startswith("_")]


def _timestamp(record: logging.LogRecord) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{base}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> list[tuple[str, object]]:
    fields: list[tuple[str, object]] = [
        ("ts", _timestamp(record)),
        ("level", record.levelname),
        ("logger", record.name),
        ("msg", record.getMessage()),
    ]
    fields.extend((key, record.__dict__[key]) for key in _extra_keys(record))
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        fields.append(("exc", record.exc_text))
    return fields


_BARE: Final = re.compile(r"[^\s\"'=\\]+")


def _kv_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    if text and _BARE.fullmatch(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """``key=value`` pairs on one line: ts, level, logger, msg, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line = " ".join(f"{key}={_kv_value(value)}" for key, value in _fields(record))
        return mask_text(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same fields as :class:`KeyValueFormatter`."""

    def format(self, record: logging.LogRecord) -> str:
        data = dict(_fields(record))
        return mask_text(json.dumps(data, ensure_ascii=False, default=repr))


class _RelayHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (so a second call replaces it)."""


def configure_logging(
    log_format: LogFormat = "kv",
    level: str | int = "info",
    *,
    stream: TextIO | None = None,
    secrets: Iterable[str | None] = (),
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) in ``log_format``, secrets masked.

    Replaces a handler installed by an earlier call; other handlers are left alone.
    Returns the installed handler.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    numeric = level if isinstance(level, int) else logging.getLevelNamesMapping()[level.upper()]
    for secret in secrets:
        register_secret(secret)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RelayHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _RelayHandler(sys.stderr if stream is None else stream)
    handler.addFilter(SecretFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    # First in line, so handlers added by others see the record already masked.
    root.handlers.insert(0, handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)
    return handler


def reset_logging() -> None:
    """Undo :func:`configure_logging`: remove its handler, put the root logger back to
    WARNING (``logging``'s default), stop capturing warnings and forget every secret
    registered with :func:`register_secret` (for an embedder's or a test's teardown)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RelayHandler)]:
        root.removeHandler(old)
        old.close()
    root.setLevel(logging.WARNING)
    logging.captureWarnings(False)
    _known_secrets.clear()
