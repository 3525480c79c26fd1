"""Where the gateway dials and where it posts: URL derivation from the configured relay URL.

The operator configures one connector URL (RC §10 ``GATEWAY_RELAY_URL``) in any of its usual
spellings: ``https://c.example``, ``wss://c.example/relay``, ``http://host:8080/``. From it
we derive the WebSocket URL the gateway dials (:func:`dial_url`) and the HTTP URLs of the
control plane (:func:`control_url`), per the table in RC §9.

Pure string work; validation of the configured value lives in :mod:`relay_runtime.config`
(:func:`relay_url_problem` is the shared check).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

RELAY_PATH: Final = "/relay"

#: The control-plane routes, by name.
PROVISION: Final = "provision"
POLICY: Final = "policy"
ENROLL: Final = "enroll"

_TO_WS: Final = {"https": "wss", "http": "ws"}
_TO_HTTP: Final = {"wss": "https", "ws": "http"}
_RELAY_SCHEMES: Final = frozenset({"http", "https", "ws", "wss"})


def _split_scheme(url: str) -> tuple[str, str]:
    """``("https", "//host/path")`` with the scheme lower-cased; ``("", url)`` without one."""
    scheme, sep, rest = url.partition(":")
    if not sep:
        return "", url
    return scheme.lower(), rest


def dial_url(relay_url: str) -> str:
    """The ``ws(s)://…/relay`` URL to dial for a configured connector URL.

    ``https`` becomes ``wss`` and ``http`` becomes ``ws``; trailing ``/`` are stripped and
    ``/relay`` is appended unless the path already ends with it.
    """
    scheme, rest = _split_scheme(relay_url.strip())
    scheme = _TO_WS.get(scheme, scheme)
    url = f"{scheme}:{rest}".rstrip("/")
    if not url.endswith(RELAY_PATH):
        url += RELAY_PATH
    return url


def control_base(relay_url: str) -> str:
    """The connector's HTTP base (``http(s)://host[:port][/prefix]``), without ``/relay``.

    Whitespace and trailing ``/`` are stripped, ``ws``/``wss`` become ``http``/``https`` and
    one trailing ``/relay`` is removed.
    """
    scheme, rest = _split_scheme(relay_url.strip())
    scheme = _TO_HTTP.get(scheme, scheme)
    url = f"{scheme}:{rest}".rstrip("/")
    if url.endswith(RELAY_PATH):
        url = url[: -len(RELAY_PATH)]
    return url


def control_url(relay_url: str, route: str) -> str:
    """The HTTP URL of a control-plane route (``"provision"``, ``"policy"``, ``"enroll"``).

    A ``route`` starting with ``/`` is taken as a full path and appended as given.
    """
    path = route if route.startswith("/") else f"{RELAY_PATH}/{route}"
    return control_base(relay_url) + path


def relay_url_problem(relay_url: str) -> str | None:
    """Why ``relay_url`` is not a usable connector URL, or ``None`` when it is.

    Accepted: an ``http``/``https``/``ws``/``wss`` URL with a host and no query or fragment.
    """
    return _url_problem(relay_url, _RELAY_SCHEMES, "http(s) or ws(s)")


def http_url_problem(url: str) -> str | None:
    """Why ``url`` is not a plain ``http(s)`` URL with a host (no query, no fragment)."""
    return _url_problem(url, frozenset({"http", "https"}), "http(s)")


def _url_problem(url: str, schemes: frozenset[str], wanted: str) -> str | None:
    try:
        parts = urlsplit(url)
        _port = parts.port  # raises ValueError for an out-of-range port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in schemes:
        shown = parts.scheme or "none"
        return f"must use an {wanted} scheme (got {shown!r})"
    if not parts.hostname:
        return "has no host"
    if parts.query or url.rstrip().endswith("?"):
        return "must not have a query string"
    if parts.fragment or "#" in url:
        return "must not have a fragment"
    return None
