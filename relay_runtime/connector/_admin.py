"""The reference connector's operator routes: drive a running connector over HTTP.

Served next to the control plane (``/relay/provision|policy|enroll``) on the same HTTP
server, under ``/admin/``. ``relay-runtime connector <command>`` is their client. Every
route takes and returns JSON; errors are ``{"error": ...}`` like the control plane's.

| route | does |
| --- | --- |
| ``status`` | every known gateway: connected, buffered-only, buffered count, revoked |
| ``wait`` | returns once ``until`` holds (504 after ``timeoutS``): see :meth:`AdminApi._wait` |
| ``inject`` | an inbound message (platform, chat, user, text), live or ``buffered`` |
| ``buffer`` | the gateway's buffered, un-acked entries |
| ``hold`` | flip the gateway to buffered-only |
| ``flush`` | replay its buffer on the live connection now |
| ``revoke`` | refuse its tokens, forget its control-plane secrets, close its sockets 4401 |
| ``journal`` | what gateways posted, from ``after`` on |

Protection: every admin call needs ``Authorization: Bearer <admin token>`` (compared in
constant time). A connector started without an admin token answers 403 to every admin
route; the CLI refuses to serve the admin routes on a non-loopback address unless told to.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs
import trio

from protocol._events import MessageEvent, SessionSource
from relay_runtime.connector._control_plane import (
    ControlPlane,
    ControlPlaneRegistry,
    HttpRequest,
    HttpResponse,
    json_response,
)
from relay_runtime.connector._server import ReferenceConnector

ADMIN_PREFIX: Final = "/admin"
#: The longest one ``wait`` call may block (seconds).
MAX_WAIT_S: Final = 600.0
_READ_ONLY: Final = frozenset({"status", "buffer", "journal"})


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _fail(message: str, status: int = 400) -> _BadRequest:
    return _BadRequest(status, message)


def _error(status: int, message: str) -> HttpResponse:
    return json_response(status, {"error": message})


def _text(body: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if value is None:
        raise _fail(f"missing field: {name}")
    if not isinstance(value, str):
        raise _fail(f"{name} must be a string")
    return value


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise _fail(f"{name} must be a boolean")
    return value


def _number(
    body: Mapping[str, Any], name: str, default: float, *, low: float, high: float
) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _fail(f"{name} must be a number from {low:g} to {high:g}")
    return float(value)


@attrs.frozen
class AdminApi:
    """The ``/admin/*`` routes over one connector (and the registry it shares, if any).

    ``token`` is the admin bearer; ``None`` disables every route (403).
    """

    connector: ReferenceConnector
    token: str | None = attrs.field(repr=False)
    registry: ControlPlaneRegistry | None = None

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        name = request.path[len(ADMIN_PREFIX) :].strip("/")
        route = _ROUTES.get(name)
        if route is None:
            return _error(404, f"no such route: {request.path}")
        allowed = ("GET", "POST") if name in _READ_ONLY else ("POST",)
        if request.method not in allowed:
            response = _error(405, f"method {request.method} not allowed")
            return attrs.evolve(response, headers=(("allow", ", ".join(allowed)),))
        if self.token is None:
            return _error(
                403,
                "admin routes are disabled: start the connector with "
                "RELAY_CONNECTOR_ADMIN_TOKEN or --admin-token-file",
            )
        given = (request.bearer() or "").encode("utf-8", "surrogateescape")
        if not secrets.compare_digest(given, self.token.encode("utf-8", "surrogateescape")):
            return _error(401, "admin token missing or wrong")
        try:
            body = _body(request)
            return json_response(200, await route(self, body))
        except _BadRequest as exc:
            return _error(exc.status, str(exc))

    # ---------------------------------------------------------------- helpers

    def _gateway(self, body: Mapping[str, Any]) -> str:
        value = body.get("gatewayId")
        if value is not None and not isinstance(value, str):
            raise _fail("gatewayId must be a string")
        try:
            return self.connector.resolve_gateway(value)
        except ValueError as exc:
            raise _fail(str(exc).replace("gateway_id=", "gatewayId")) from None

    def _gateway_status(self, gateway_id: str) -> dict[str, Any]:
        connector = self.connector
        live = [c for c in connector.connections if c.open and c.gateway_id == gateway_id]
        return {
            "gatewayId": gateway_id,
            "connected": connector.current(gateway_id) is not None,
            "sockets": len(live),
            "bufferedOnly": connector.is_buffered_only(gateway_id),
            "buffered": len(connector.buffered(gateway_id)),
            "revoked": connector.is_revoked(gateway_id),
        }

    # ---------------------------------------------------------------- routes

    async def _status(self, body: Mapping[str, Any]) -> dict[str, Any]:
        gateways = [self._gateway_status(g) for g in self.connector.known_gateways()]
        return {"gateways": gateways, "journal": len(self.connector.journal)}

    async def _wait(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``until``: the gateway is ``connected`` (handshaken), ``disconnected`` (no open
        socket), ``drained`` (its buffer is empty), or the ``journal`` holds ``count`` posts."""
        until = _text(body, "until")
        timeout = _number(body, "timeoutS", 30.0, low=0.0, high=MAX_WAIT_S)
        connector = self.connector
        if until == "journal":
            count = _number(body, "count", 1, low=0, high=1e12)
            what = f"{count:g} journalled posts"

            def predicate() -> bool:
                return len(connector.journal) >= count

        elif until in ("connected", "disconnected", "drained"):
            gid = self._gateway(body)
            what = f"gateway {gid!r} {until}"

            def predicate() -> bool:
                if until == "connected":
                    return connector.current(gid) is not None
                if until == "disconnected":
                    return not any(c.open and c.gateway_id == gid for c in connector.connections)
                return not connector.buffered(gid)

        else:
            raise _fail("until must be connected, disconnected, drained or journal")
        with trio.move_on_after(timeout):
            await connector.wait_for(predicate)
            return await self._status(body)
        raise _fail(f"timed out after {timeout:g} s waiting for {what}", 504)

    async def _inject(self, body: Mapping[str, Any]) -> dict[str, Any]:
        gid = self._gateway(body)
        text = _text(body, "text")
        chat = _text(body, "chatId", "chat-1")
        source = SessionSource(
            platform=_text(body, "platform", "relay"),
            chat_id=chat,
            chat_type=_text(body, "chatType", "dm"),
            user_id=_text(body, "userId", "user-1"),
            user_name=body.get("userName") if isinstance(body.get("userName"), str) else None,
        )
        delivery = await self.connector.inject(
            MessageEvent(text=text, source=source),
            gateway_id=gid,
            addressed=_flag(body, "addressed", True),
            buffered=_flag(body, "buffered", False),
        )
        reply: dict[str, Any] = {"gatewayId": gid, "outcome": delivery.outcome}
        if delivery.buffer_id is not None:
            reply["bufferId"] = delivery.buffer_id
        if delivery.reason is not None:
            reply["reason"] = delivery.reason
        return reply

    async def _buffer(self, body: Mapping[str, Any]) -> dict[str, Any]:
        gid = self._gateway(body)
        entries = []
        for frame in self.connector.buffered(gid):
            entry: dict[str, Any] = {"bufferId": frame.buffer_id, "type": frame.TYPE}
            event = getattr(frame, "event", None)
            if isinstance(event, MessageEvent):
                entry |= {
                    "chatId": event.source.chat_id,
                    "userId": event.source.user_id,
                    "text": event.text,
                }
            entries.append(entry)
        return self._gateway_status(gid) | {"entries": entries}

    async def _hold(self, body: Mapping[str, Any]) -> dict[str, Any]:
        gid = self._gateway(body)
        self.connector.hold(gid)
        return self._gateway_status(gid)

    async def _flush(self, body: Mapping[str, Any]) -> dict[str, Any]:
        gid = self._gateway(body)
        try:
            replaying = self.connector.flush(gid)
        except LookupError as exc:
            raise _fail(f"{exc}; its buffer is replayed when it reconnects", 409) from None
        return self._gateway_status(gid) | {"replaying": replaying}

    async def _revoke(self, body: Mapping[str, Any]) -> dict[str, Any]:
        gid = self._gateway(body)
        if self.registry is not None and gid in self.registry.gateways:
            self.registry.revoke(gid)
        closed = await self.connector.revoke(gid)
        return self._gateway_status(gid) | {"closed": closed}

    async def _journal(self, body: Mapping[str, Any]) -> dict[str, Any]:
        after = int(_number(body, "after", 0, low=0, high=1e12))
        journal = self.connector.journal  # the newest posts (keep_records), seq 1, 2, ...
        return {
            "entries": [post.to_json() for post in journal if post.seq > after],
            "next": journal[-1].seq if journal else 0,
        }


Route = Callable[[AdminApi, Mapping[str, Any]], Awaitable[dict[str, Any]]]
_ROUTES: Final[dict[str, Route]] = {
    "status": AdminApi._status,
    "wait": AdminApi._wait,
    "inject": AdminApi._inject,
    "buffer": AdminApi._buffer,
    "hold": AdminApi._hold,
    "flush": AdminApi._flush,
    "revoke": AdminApi._revoke,
    "journal": AdminApi._journal,
}


def _body(request: HttpRequest) -> Mapping[str, Any]:
    if not request.body.strip():
        return {}
    try:
        body = json.loads(request.body)
    except ValueError:
        raise _fail("body is not valid JSON") from None
    except RecursionError:
        raise _fail("body is nested too deeply") from None
    if not isinstance(body, dict):
        raise _fail("body must be a JSON object")
    return body


def operator_app(
    control: ControlPlane, admin: AdminApi
) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    """One HTTP app: ``/admin/*`` to ``admin``, everything else to the control plane."""

    async def app(request: HttpRequest) -> HttpResponse:
        if request.path == ADMIN_PREFIX or request.path.startswith(ADMIN_PREFIX + "/"):
            return await admin(request)
        return await control(request)

    return app
