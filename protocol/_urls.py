"""Where the gateway dials and where it posts: URL derivation from the configured relay URL.

The operator configures one connector URL (RC §10 ``GATEWAY_RELAY_URL``) in any of its usual
spellings: ``https://c.example``, ``wss://c.example/relay``, ``http://host:8080/``. From it
we derive the WebSocket URL the gateway dials (:func:`dial_url`) and the HTTP URLs of the
control plane (:func:`control_url`), per the table in RC §9.

Pure string work; validation of the configured value lives in :mod:`relay_runtime.config`
(:func:`relay_url_problem` is the shared check).
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import idna

RELAY_PATH: Final = "/relay"

#: The control-plane routes, by name.
PROVISION: Final = "provision"
POLICY: Final = "policy"
ENROLL: Final = "enroll"

_TO_WS: Final = {"https": "wss", "http": "ws"}
_TO_HTTP: Final = {"wss": "https", "ws": "http"}
_RELAY_SCHEMES: Final = frozenset({"http", "https", "ws", "wss"})
_MAX_LABEL: Final = 63
_MAX_HOST: Final = 253
_LDH: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
#: Shown instead of the ``user:password`` part of a URL.
HIDDEN_USERINFO: Final = "<hidden>"


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

    Accepted: an ``http``/``https``/``ws``/``wss`` URL with a dialable host (see
    :func:`host_problem`), a port in 1-65535 if any, no ``user:password@`` (the gateway
    authenticates with its bearer token; credentials in the URL would replace it on the
    control plane and be sent as the WebSocket ``Host``), no query or fragment.
    """
    return _url_problem(relay_url, _RELAY_SCHEMES, "http(s) or ws(s)", userinfo=False)


def http_url_problem(url: str) -> str | None:
    """Why ``url`` is not a plain ``http(s)`` URL with a dialable host (no query, no fragment).

    ``user:password@`` is allowed here (a wake URL may carry basic auth); log such a URL
    through :func:`redact_url`.
    """
    return _url_problem(url, frozenset({"http", "https"}), "http(s)", userinfo=True)


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``<hidden>@``; anything else as given.

    For every place a configured URL is shown (logs, error messages): the userinfo is a
    credential. A text that does not parse is returned with everything up to the last ``@``
    of its authority hidden, so a malformed URL cannot leak a password either.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        scheme, sep, rest = url.partition("://")
        authority, slash, tail = rest.partition("/")
        if sep and "@" in authority:
            return f"{scheme}://{HIDDEN_USERINFO}@{authority.rpartition('@')[2]}{slash}{tail}"
        return url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{HIDDEN_USERINFO}@{host}"))


def host_problem(host: str) -> str | None:
    """Why the dialer could not resolve ``host`` (a URL's hostname), or ``None``.

    Checked the way the socket layer will use it: an IP literal is fine; a name must encode
    with both IDNA codecs in play (the standard library's, used by ``getaddrinfo`` and TLS
    SNI for text host names, and UTS-46 ``idna``, used by trio for non-ASCII names), with no
    empty label (``a..b``), no label over 63 octets, at most 253 octets in all, and ASCII
    labels made of letters, digits, ``-`` and ``_``, not starting or ending with ``-``.
    """
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host  # one trailing dot: fully qualified
    if not name:
        return f"host {host!r} is empty"
    for label in name.split("."):
        if not label:
            return f"host {host!r} has an empty label"
        try:
            encoded = label.encode("ascii")
        except UnicodeEncodeError:
            try:
                encoded = idna.encode(label, uts46=True)
                label.encode("idna")
            except (idna.IDNAError, UnicodeError) as exc:
                return f"host {host!r} has a label that is not valid IDNA ({exc})"
        else:
            if not set(label.lower()) <= _LDH:
                return (
                    f"host {host!r} has a label with a character other than a letter, a digit, "
                    "'-' or '_'"
                )
            if label.startswith("-") or label.endswith("-"):
                return f"host {host!r} has a label that starts or ends with '-'"
        if len(encoded) > _MAX_LABEL:
            return f"host {host!r} has a label longer than {_MAX_LABEL} characters"
    try:
        total = len(idna.encode(name, uts46=True)) if not name.isascii() else len(name)
        name.encode("idna")
    except (idna.IDNAError, UnicodeError) as exc:
        return f"host {host!r} is not valid IDNA ({exc})"
    if total > _MAX_HOST:
        return f"host {host!r} is longer than {_MAX_HOST} characters"
    return None


def _url_problem(url: str, schemes: frozenset[str], wanted: str, *, userinfo: bool) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for an out-of-range or non-numeric port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in schemes:
        shown = parts.scheme or "none"
        return f"must use an {wanted} scheme (got {shown!r})"
    if not parts.hostname:
        return "has no host"
    if not userinfo and "@" in parts.netloc:
        return "must not contain user:password@ (the gateway authenticates with its token)"
    if port == 0:
        return "has port 0 (a port must be 1-65535)"
    if (problem := host_problem(parts.hostname)) is not None:
        return problem
    if parts.query or url.rstrip().endswith("?"):
        return "must not have a query string"
    if parts.fragment or "#" in url:
        return "must not have a fragment"
    return None
