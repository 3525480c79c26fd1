"""The control plane's HTTP plumbing and values: one bounded JSON ``POST`` (:func:`_send`), the
errors and results of the calls, and the bearer tokens."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from protocol._auth import make_token
from protocol._events import Identity
from relay_runtime.config import GatewayConfig, mask

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("relay_runtime.control")

DEFAULT_TIMEOUT_S: Final = 15.0


class ControlError(Exception):
    """A control-plane call failed; ``str(error)`` is the message for the user (no secrets)."""


def _hidden(value: object) -> str:
    return mask(value)


@attrs.frozen
class Credentials:
    """The per-gateway channel credential: ``gateway_id`` + ``secret`` (RC §5).

    ``delivery_key`` is kept and never used (RC §1). ``wake_confirmed`` says the connector
    accepted our wake URL (provision success, or an exact echo from enroll).
    """

    gateway_id: str
    secret: str = attrs.field(repr=_hidden)
    delivery_key: str | None = attrs.field(default=None, repr=_hidden)
    tenant: str | None = None
    route_keys: tuple[str, ...] = ()
    wake_confirmed: bool = False


@attrs.frozen
class ProvisionResult:
    """What provisioning every identity produced.

    ``credentials`` come from the first credential-bearing response (``None`` if none did);
    ``errors`` pairs each failed identity with its RC §9 message, in order.
    """

    credentials: Credentials | None
    succeeded: tuple[Identity, ...]
    errors: tuple[tuple[Identity, str], ...]
    wake_confirmed: bool


@attrs.frozen
class EnrollResult:
    """A successful enrollment: the credentials and whether the wake URL was confirmed."""

    credentials: Credentials
    wake_url: str | None
    wake_confirmed: bool


# --------------------------------------------------------------------------- HTTP plumbing


def open_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An ``AsyncClient`` set up for control-plane calls (use it with ``async with``).

    TLS verified, redirects not followed. The deadline is not httpx's: httpx's own timeouts
    are off (its 5 s default would beat a longer ``http_timeout_s``) and each call wraps
    itself in :func:`trio.fail_after` with the configured ``http_timeout_s``.
    """
    import httpx  # imported on first use: a gateway without a control plane never needs it

    return httpx.AsyncClient(follow_redirects=False, verify=True, transport=transport, timeout=None)


class _Unreachable(Exception):
    """No HTTP response: connection refused, DNS, TLS, timeout; ``str`` is the reason."""


@attrs.frozen
class _Reply:
    status: int
    body: object  # parsed JSON; _NOT_JSON when the body is not JSON

    def error_text(self) -> str | None:
        """The body's string ``error``, if it has one."""
        if isinstance(self.body, dict):
            error = self.body.get("error")
            if isinstance(error, str) and error:
                return error
        return None


_NOT_JSON: Final = object()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


async def _send(
    client: httpx.AsyncClient,
    url: str,
    http_timeout_s: float,
    *,
    bearer: str | None,
    json_body: Mapping[str, object] | None = None,
    form: Mapping[str, str] | None = None,
) -> _Reply:
    """One POST, bounded by ``http_timeout_s``; raises :class:`_Unreachable` without reply."""
    headers = {"Accept": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    content: bytes | None = None
    if json_body is not None:
        headers["Content-Type"] = "application/json"
        content = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
    import httpx  # already loaded: ``client`` is one of its clients

    try:
        with trio.fail_after(http_timeout_s):
            response = await client.post(
                url, content=content, data=form, headers=headers, follow_redirects=False
            )
    except trio.TooSlowError:
        raise _Unreachable(f"timed out after {http_timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise _Unreachable(_reason(exc)) from None
    try:
        body: object = json.loads(response.content) if response.content else _NOT_JSON
    except ValueError:
        body = _NOT_JSON
    return _Reply(response.status_code, body)


def _http_failure(reply: _Reply, prefix: str) -> str:
    error = reply.error_text()
    return f"{prefix} HTTP {reply.status}" + (f": {error}" if error else "")


def _nonempty_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _credentials_from(body: Mapping[str, Any], gateway_id: str, *, wake: bool) -> Credentials:
    route_keys = body.get("routeKeys")
    return Credentials(
        gateway_id=_nonempty_str(body.get("gatewayId")) or gateway_id,
        secret=str(body["secret"]),
        delivery_key=_nonempty_str(body.get("deliveryKey")),
        tenant=_nonempty_str(body.get("tenant")),
        route_keys=tuple(k for k in route_keys if isinstance(k, str))
        if isinstance(route_keys, list)
        else (),
        wake_confirmed=wake,
    )


@asynccontextmanager
async def _maybe_client(client: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    """The given client untouched, or a fresh one closed afterwards."""
    if client is not None:
        yield client
        return
    async with open_client() as owned:
        yield owned


def default_gateway_id(hostname: str | None = None) -> str:
    """``gw-<hostname>``, or ``gw-hermes`` when the host has no name (RC §9)."""
    name = (socket.gethostname() if hostname is None else hostname).strip()
    return f"gw-{name}" if name else "gw-hermes"


# --------------------------------------------------------------------------- bearer tokens


def upgrade_token(config: GatewayConfig, gateway_id: str, secret: str, *, now: float) -> str:
    """The bearer for one upgrade or control-plane call: valid ``config.token_ttl_s`` seconds.

    ``now`` is wall-clock time (token expiry is wall time, compared by the connector).
    """
    return make_token(gateway_id, secret, config.token_ttl_s, now=now)


def upgrade_token_factory(
    config: GatewayConfig, wall_clock: Callable[[], float] = time.time
) -> Callable[[str, str], str]:
    """``(gateway_id, secret) -> token`` minting with ``config.token_ttl_s`` (the supervisor's)."""

    def mint(gateway_id: str, secret: str) -> str:
        return upgrade_token(config, gateway_id, secret, now=wall_clock())

    return mint
