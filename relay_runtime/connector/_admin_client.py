"""A small blocking client for a running connector's ``/admin/*`` routes (the CLI uses it).

Blocking on purpose: each ``relay-runtime connector <command>`` makes one call and exits.
Every failure is an :class:`AdminError` whose message is one line for the user.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from relay_runtime.connector._admin import ADMIN_PREFIX

#: Added to a call's own wait so the HTTP read does not time out first (seconds).
_SLACK_S = 10.0
#: Between attempts to reach a connector that is not listening yet, during a wait (seconds).
_RETRY_S = 0.2


class AdminError(Exception):
    """An admin call that failed: unreachable connector, or an HTTP error with its message."""


class AdminClient:
    """Calls one connector's admin routes with the admin bearer token."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s

    def call(self, route: str, body: dict[str, Any] | None = None, *, wait_s: float = 0.0) -> Any:
        """POST ``body`` to ``/admin/<route>`` and return the decoded JSON reply.

        With ``wait_s`` (a ``wait`` call), a connector that is not listening yet (connection
        refused) is tried again until ``wait_s`` has passed: a script may start the
        connector in the background and wait for its gateway on the next line.
        """
        url = f"{self.base_url}{ADMIN_PREFIX}/{route}"
        payload = {k: v for k, v in (body or {}).items() if v is not None}
        deadline = time.monotonic() + wait_s
        with httpx.Client(timeout=self._timeout_s + wait_s + _SLACK_S) as client:
            while True:
                try:
                    response = client.post(
                        url,
                        json=payload,
                        headers={"Authorization": f"Bearer {self._token}"},
                        follow_redirects=False,
                    )
                    break
                except httpx.ConnectError as exc:
                    if time.monotonic() + _RETRY_S < deadline:
                        time.sleep(_RETRY_S)
                        continue
                    raise self._unreachable(exc) from None
                except httpx.HTTPError as exc:
                    raise self._unreachable(exc) from None
        try:
            reply = response.json()
        except ValueError:
            reply = None
        if response.status_code != 200:
            message = reply.get("error") if isinstance(reply, dict) else None
            detail = message if isinstance(message, str) else response.reason_phrase
            raise AdminError(f"connector refused {route} (HTTP {response.status_code}): {detail}")
        if not isinstance(reply, dict):
            raise AdminError(f"connector answered {route} with something other than JSON")
        return reply

    def _unreachable(self, exc: Exception) -> AdminError:
        reason = str(exc) or type(exc).__name__
        return AdminError(f"cannot reach the connector at {self.base_url}: {reason}")
