"""Enrollment (RC §9): the ``enroll`` command's call and persisting its credentials to
``<state dir>/relay.env``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from protocol._urls import ENROLL, control_base, control_url, redact_url
from relay_runtime._control._client import (
    DEFAULT_TIMEOUT_S,
    ControlError,
    Credentials,
    EnrollResult,
    _credentials_from,
    _http_failure,
    _nonempty_str,
    _Reply,
    _send,
    _Unreachable,
    logger,
)
from relay_runtime.config import ENV_FILE_NAME, HIDDEN

if TYPE_CHECKING:
    import httpx

UNCONFIRMED_WAKE_WARNING: Final = "connector did not confirm the wake URL; suspend() stays disabled"
ENROLL_401: Final = (
    "The connector could not verify your identity token (HTTP 401); "
    "log in again or refresh the IdP credentials."
)
ENROLL_403: Final = "Enrollment token invalid, expired, already used, or tenant mismatch (403)."
ENROLL_NO_SECRET: Final = "Connector returned an unexpected response (no secret)."


async def enroll(
    *,
    connector_url: str,
    enrollment_token: str,
    identity_token: str,
    gateway_id: str,
    wake_url: str | None,
    client: httpx.AsyncClient,
    http_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> EnrollResult:
    """``POST /relay/enroll``; raises :class:`ControlError` with the RC §9 message.

    ``wakeUrl`` is sent when known (gap 12) and confirmed only on an exact echo; a 400 whose
    ``error`` mentions ``wakeUrl`` is retried once without it.
    """
    url = control_url(connector_url, ENROLL)
    body: dict[str, Any] = {"enrollmentToken": enrollment_token, "gatewayId": gateway_id}
    if wake_url:
        body["wakeUrl"] = wake_url
    reply = await _enroll_once(client, url, connector_url, body, identity_token, http_timeout_s)
    error = reply.error_text() or ""
    if reply.status == 400 and "wakeUrl" in body and "wakeurl" in error.lower():
        logger.warning("relay: connector rejected the wake URL (%s); retrying without it", error)
        del body["wakeUrl"]
        reply = await _enroll_once(client, url, connector_url, body, identity_token, http_timeout_s)
    if reply.status == 401:
        raise ControlError(ENROLL_401)
    if reply.status == 403:
        raise ControlError(reply.error_text() or ENROLL_403)
    if not 200 <= reply.status < 300:
        raise ControlError(_http_failure(reply, "Connector returned"))
    if not isinstance(reply.body, dict) or not _nonempty_str(reply.body.get("secret")):
        raise ControlError(ENROLL_NO_SECRET)
    sent_wake = body.get("wakeUrl")
    confirmed = sent_wake is not None and reply.body.get("wakeUrl") == sent_wake
    if wake_url and not confirmed:
        logger.warning("relay: %s", UNCONFIRMED_WAKE_WARNING)
    credentials = _credentials_from(reply.body, gateway_id, wake=confirmed)
    return EnrollResult(credentials=credentials, wake_url=wake_url, wake_confirmed=confirmed)


async def _enroll_once(
    client: httpx.AsyncClient,
    url: str,
    connector_url: str,
    body: Mapping[str, Any],
    identity_token: str,
    http_timeout_s: float,
) -> _Reply:
    try:
        return await _send(client, url, http_timeout_s, bearer=identity_token, json_body=body)
    except _Unreachable as exc:
        base = redact_url(control_base(connector_url))
        raise ControlError(f"Could not reach the connector at {base}: {exc}") from None


def persist_enrollment(
    state_dir: Path,
    result: EnrollResult,
    *,
    connector_url: str | None = None,
) -> list[tuple[str, str]]:
    """Write the enrolled credentials to ``<state dir>/relay.env`` (mode 0600), idempotently.

    Other lines of the file are kept; our keys are replaced in place or appended; empty
    values are skipped, and ``GATEWAY_RELAY_WAKE_CONFIRMED`` is removed unless this
    enrollment confirmed the wake URL. Returns the written ``(key, shown value)`` pairs,
    secrets shown as ``<hidden>``.
    """
    creds = result.credentials
    wanted: list[tuple[str, str | None, bool]] = [
        ("GATEWAY_RELAY_ID", creds.gateway_id, False),
        ("GATEWAY_RELAY_SECRET", creds.secret, True),
        ("GATEWAY_RELAY_DELIVERY_KEY", creds.delivery_key, True),
        ("GATEWAY_RELAY_URL", connector_url.rstrip("/") if connector_url else None, False),
        ("GATEWAY_RELAY_WAKE_URL", result.wake_url.rstrip("/") if result.wake_url else None, False),
        ("GATEWAY_RELAY_WAKE_CONFIRMED", "1" if result.wake_confirmed else None, False),
    ]
    for name, value, _ in wanted:
        if value is not None and ("\n" in value or "\r" in value):
            raise ControlError(f"Connector returned a value that cannot be stored in {name}.")
    updates = {key: value for key, value, _ in wanted if value}
    removals = {"GATEWAY_RELAY_WAKE_CONFIRMED"} - set(updates)

    path = state_dir / ENV_FILE_NAME
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    lines: list[str] = []
    done: set[str] = set()
    for line in existing:
        key = line.partition("=")[0].strip() if "=" in line else None
        if key in removals:
            continue
        if key is not None and key in updates:
            if key not in done:
                lines.append(f"{key}={updates[key]}")
                done.add(key)
            continue
        lines.append(line)
    lines.extend(f"{key}={value}" for key, value in updates.items() if key not in done)
    _write_private(path, "".join(f"{line}\n" for line in lines))
    return [
        (key, HIDDEN if secret else redact_url(value)) for key, value, secret in wanted if value
    ]


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by the owner only (0600).

    The text goes to a new, uniquely named file (``O_EXCL | O_NOFOLLOW``, so nothing planted
    in a shared state dir can redirect it) that is then renamed over ``path``; the rename
    replaces a symlink at ``path`` instead of following it.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)  # the creation mode is masked by the umask
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def shown_credentials(credentials: Credentials) -> Sequence[tuple[str, str]]:
    """``(name, value)`` pairs to print, secrets as ``<hidden>``."""
    pairs = [("GATEWAY_RELAY_ID", credentials.gateway_id), ("GATEWAY_RELAY_SECRET", HIDDEN)]
    if credentials.delivery_key:
        pairs.append(("GATEWAY_RELAY_DELIVERY_KEY", HIDDEN))
    if credentials.tenant:
        pairs.append(("tenant", credentials.tenant))
    return pairs
