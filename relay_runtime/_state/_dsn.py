"""A PostgreSQL DSN as messages may show it: without its password.

Both forms libpq takes: a URL (``postgresql://user:secret@host/db?password=...``) and
``key=value`` words (``host=... password=secret``). Importable without psycopg.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from protocol._urls import redact_url

_HIDDEN: Final = "<hidden>"
_KV_PASSWORD: Final = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_PASSWORD: Final = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def _is_url(dsn: str) -> bool:
    return dsn.strip().lower().startswith(("postgresql://", "postgres://"))


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password (and a URL's user) hidden."""
    if _is_url(dsn):
        return _URL_PASSWORD.sub(rf"\g<1>{_HIDDEN}", redact_url(dsn))
    return _KV_PASSWORD.sub(rf"\g<1>{_HIDDEN}", dsn)


def dsn_password(dsn: str) -> str | None:
    """The password written in ``dsn``, if any (to scrub it from logs as a secret)."""
    if _is_url(dsn):
        try:
            parts = urlsplit(dsn)
            query = dict(parse_qsl(parts.query))
        except ValueError:
            return None
        return parts.password or query.get("password") or None
    found = _KV_PASSWORD.search(dsn)
    if found is None:
        return None
    value = found.group(2)
    if value.startswith("'") and value.endswith("'") and len(value) >= 2:
        value = value[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    return value or None
