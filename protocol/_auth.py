"""Channel authentication: HMAC-SHA256 signatures and bearer tokens (RC §5).

This is the gateway's only cryptography and the only module that imports ``hmac`` or
``hashlib`` for it. A token is ``base64url(f"{payload}:{exp}:{sig}")`` without padding,
where ``sig`` is the lowercase hex HMAC-SHA256 of ``f"{payload}:{exp}"`` keyed with the
secret's UTF-8 bytes (a hex-looking secret is used as text, never hex-decoded) and ``exp`` is
a Unix time in seconds, ``0`` meaning "never expires".

Verification returns the payload or ``None`` and never raises on bad tokens; it accepts a
list of secrets so that a rotation window (primary first, then the secondary) works.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Iterable

#: Lifetime of the bearer token minted for every dial and control-plane call.
UPGRADE_TOKEN_TTL_S = 300

_TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
_EXP = re.compile(r"0|[1-9][0-9]{0,18}")  # at most 19 digits: no huge-int parsing
_SIG_HEX = re.compile(r"[0-9a-fA-F]{64}")


def sign(message: str | bytes, secret: str) -> str:
    """The lowercase hex HMAC-SHA256 of ``message`` keyed with ``secret``'s UTF-8 bytes."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()


def derive_request_id(key: bytes, delivery: bytes, ordinal: int) -> str:
    """The ``requestId`` of a turn's ``ordinal``-th reply to ``delivery`` (issue 11).

    ``HMAC-SHA256(key, delivery || 0x00 || str(ordinal))`` cut to 32 lowercase hex digits,
    so a re-run of the same delivery re-sends under the same ids (the connector drops the
    repeat), and ids of different gateways (keys) or deliveries never meet.
    """
    message = delivery + b"\x00" + str(ordinal).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


class RequestIdKey:
    """A reply key with HMAC-SHA256's key schedule done once: :meth:`derive` is
    :func:`derive_request_id` under that key, without re-keying the MAC for every id."""

    __slots__ = ("_mac",)

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def derive(self, delivery: bytes, ordinal: int) -> str:
        """The ``requestId`` of the ``ordinal``-th reply to ``delivery`` (as
        :func:`derive_request_id`)."""
        mac = self._mac.copy()
        mac.update(delivery + b"\x00" + str(ordinal).encode())
        return mac.hexdigest()[:32]


def make_token(payload: str, secret: str, ttl_seconds: int = 0, *, now: float | None = None) -> str:
    """A bearer token carrying ``payload``, valid ``ttl_seconds`` from ``now`` (0: forever).

    ``payload`` may contain colons. ``now=None`` means the current time.
    """
    if not payload:
        raise ValueError("token payload must be a non-empty string")
    if not secret:
        raise ValueError("token secret must be a non-empty string")
    exp = 0
    if ttl_seconds > 0:
        exp = int(time.time() if now is None else now) + ttl_seconds
    signed = f"{payload}:{exp}"
    token = f"{signed}:{sign(signed, secret)}".encode()
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")


def make_upgrade_token(gateway_id: str, secret: str, *, now: float | None = None) -> str:
    """The token for one ``/relay`` upgrade or control-plane call: TTL 300 s, minted fresh."""
    return make_token(gateway_id, secret, UPGRADE_TOKEN_TTL_S, now=now)


def _secret_list(secrets: Iterable[str]) -> list[str]:
    # A bare string is iterable too; read as a list it would try every character as a key.
    if isinstance(secrets, str | bytes):
        raise TypeError("secrets must be a list of secret strings, not a single string")
    out: list[str] = []
    for secret in secrets:
        if not isinstance(secret, str):
            raise TypeError(f"each secret must be a string, not {type(secret).__name__}")
        if secret:
            out.append(secret)
    return out


def verify_signature(message: str | bytes, sig: str, secrets: Iterable[str]) -> bool:
    """Whether ``sig`` (64 hex digits) is the HMAC of ``message`` under one of ``secrets``.

    Empty secrets are skipped; each comparison is constant-time.
    """
    keys = _secret_list(secrets)
    if not isinstance(sig, str) or not _SIG_HEX.fullmatch(sig):
        return False
    try:
        given = bytes.fromhex(sig)
    except ValueError:
        return False
    data = message.encode("utf-8") if isinstance(message, str) else message
    matched = False
    for key in keys:
        digest = hmac.new(key.encode("utf-8"), data, hashlib.sha256).digest()
        matched |= hmac.compare_digest(digest, given)
    return matched


def _decode_token(token: str) -> str | None:
    """The token's text: strict base64url (re-padded, canonical) then strict UTF-8."""
    if not _TOKEN_ALPHABET.fullmatch(token):
        return None
    padded = token + "=" * (-len(token) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        return None
    # Non-zero padding bits decode silently; a token that does not re-encode to itself
    # was not made by an encoder, so it is refused (our choice: strict).
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _token_parts(token: object) -> list[str] | None:
    """A token's ``payload:exp:sig`` text split at ``:`` (the payload may hold ``:``), or
    ``None`` when it is not a string, does not decode, or has fewer than three parts."""
    if not isinstance(token, str) or not token:
        return None
    text = _decode_token(token)
    if text is None:
        return None
    parts = text.split(":")
    return parts if len(parts) >= 3 else None


def token_payload_unverified(token: str) -> str | None:
    """The payload a token *claims*, decoded as :func:`verify_token` does, before any check.

    For a verifier that must choose the secrets to verify with (a connector looks up the
    gateway id's rotation list); never trust it without verifying. ``None`` if unreadable.
    """
    parts = _token_parts(token)
    return None if parts is None else ":".join(parts[:-2]) or None


def verify_token(token: str, secrets: Iterable[str], *, now: float | None = None) -> str | None:
    """The payload of a valid, unexpired ``token`` signed with one of ``secrets``, else None.

    ``now == exp`` is still valid; ``exp == 0`` never expires. Never raises on bad tokens.
    """
    keys = _secret_list(secrets)
    parts = _token_parts(token)
    if parts is None:
        return None
    sig, exp_text = parts[-1], parts[-2]
    payload = ":".join(parts[:-2])
    if not payload or not _EXP.fullmatch(exp_text):
        return None
    exp = int(exp_text)
    if exp != 0 and (time.time() if now is None else now) > exp:
        return None
    if not verify_signature(f"{payload}:{exp}", sig, keys):
        return None
    return payload
