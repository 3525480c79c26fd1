"""A small HTTP/1.1 server (h11 on trio) for the reference connector's loopback services.

The control plane (:mod:`.control_plane`), the operator's admin routes (:mod:`.admin`) and
the gateway's metrics endpoint are apps on it: an app takes an :class:`HttpRequest` and
returns an :class:`HttpResponse`. Bounded: a body limit (413), an idle timeout per
connection, and a lingering close after an early error so the client still reads the reply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from http import HTTPStatus
from typing import Final

import attrs
import h11
import trio

logger = logging.getLogger("relay_runtime.connector.control_plane")


MAX_BODY_BYTES: Final = 1 << 20
IDLE_TIMEOUT_S: Final = 30.0
#: After an error that ends a connection early (413, 400), how long the server keeps
#: reading and discarding what the client still sends, so that closing does not reset the
#: connection (and destroy the unread response at the client) while the client is uploading.
LINGER_S: Final = 5.0
#: ... and at most this many bytes.
LINGER_BYTES: Final = 64 << 20
_READ_SIZE: Final = 65536


@attrs.frozen
class HttpRequest:
    """One complete request as the app sees it; header names are lower-case."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), if present."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def bearer(self) -> str | None:
        """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
        scheme, _, token = (self.header("authorization") or "").partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None


@attrs.frozen
class HttpResponse:
    """One response; ``Content-Length`` is added by the server."""

    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: object) -> HttpResponse:
    """A compact JSON response."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return HttpResponse(status, body)


def error_response(status: int, message: str, *headers: tuple[str, str]) -> HttpResponse:
    """A JSON error ``{"error": message}`` with ``headers``."""
    return attrs.evolve(json_response(status, {"error": message}), headers=headers)


HttpApp = Callable[[HttpRequest], Awaitable[HttpResponse]]


@attrs.frozen
class HttpServer:
    """Where a :func:`serve_http` server listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"


async def serve_http(
    app: HttpApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_body_bytes: int = MAX_BODY_BYTES,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTP/1.1 until cancelled; ``nursery.start`` returns the address.

    Keep-alive is supported; a connection idle for ``idle_timeout_s`` is closed. A body over
    ``max_body_bytes`` gets 413, a request h11 cannot parse gets 400, and an app that raises
    gets 500; every error body is ``{"error": ...}``.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    handler = partial(_serve_connection, app, max_body_bytes, idle_timeout_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(HttpServer(host, bound))


class _TooLarge(Exception):
    pass


async def _serve_connection(
    app: HttpApp, max_body_bytes: int, idle_timeout_s: float, stream: trio.SocketStream
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    async with stream:
        try:
            while True:
                request: HttpRequest | None = None
                early: HttpResponse | None = None
                with trio.move_on_after(idle_timeout_s):
                    try:
                        request = await _read_request(conn, stream, max_body_bytes)
                    except h11.RemoteProtocolError as exc:
                        early = error_response(400, f"bad request: {exc}")
                    except _TooLarge:
                        early = error_response(413, f"body larger than {max_body_bytes} bytes")
                if early is not None:
                    await _respond(conn, stream, attrs.evolve(early, headers=_CLOSE))
                    await _linger(stream)
                    return
                if request is None:
                    return
                try:
                    response = await app(request)
                except Exception:
                    logger.exception("control plane: handler failed for %s", request.path)
                    response = error_response(500, "internal error")
                await _respond(conn, stream, response)
                if h11.MUST_CLOSE in (conn.our_state, conn.their_state):
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            return


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream, max_body_bytes: int
) -> HttpRequest | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_READ_SIZE))
        elif isinstance(event, h11.Request):
            head = event
            declared = dict(head.headers).get(b"content-length")
            if declared is not None and int(declared) > max_body_bytes:
                raise _TooLarge  # h11 has checked that it is a number
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body_bytes:
                raise _TooLarge
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return HttpRequest(
                method=head.method.decode("ascii", "replace"),
                path=head.target.decode("ascii", "replace").partition("?")[0],
                headers=tuple(
                    (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers
                ),
                body=bytes(body),
            )
        else:  # ConnectionClosed, or PAUSED after a peer's half-close
            return None


_CLOSE: Final = (("connection", "close"),)


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then read and discard until the client closes (bounded); see LINGER_S.

    The response is already sent: the FIN tells the client it is complete, and reading on
    keeps the kernel from answering the client's remaining upload with a reset.
    """
    with trio.move_on_after(LINGER_S):
        try:
            await stream.send_eof()
            drained = 0
            while drained < LINGER_BYTES and (chunk := await stream.receive_some(_READ_SIZE)):
                drained += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _respond(conn: h11.Connection, stream: trio.SocketStream, response: HttpResponse) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    try:
        reason = HTTPStatus(response.status).phrase.encode()
    except ValueError:
        reason = b""
    if response.status in (204, 304) or response.status < 200:
        response = attrs.evolve(response, body=b"", content_type=None)
        headers = []
    else:
        headers = [(b"content-length", str(len(response.body)).encode())]
    if response.content_type:
        headers.append((b"content-type", response.content_type.encode()))
    headers += [(k.encode(), v.encode()) for k, v in response.headers]
    data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
    data = (data or b"") + (conn.send(h11.Data(data=response.body)) or b"")
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)
