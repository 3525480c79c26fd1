"""The client side of a WebSocket (RFC 6455), without I/O: the opening handshake and framing.

The gateway is always the client: it dials the connector. :class:`ClientHandshake` writes the
upgrade request and reads the answer (through h11, as wsproto does); :class:`ClientFrames`
then turns bytes from the server into messages and control events, and messages into masked
frames. Neither does I/O: the trio layer (``relay_runtime._websocket``) feeds them what it
reads and writes what they return, the way h11 and wsproto keep their state machines apart
from sockets.

The framing is written for the relay's traffic: many small text messages each way. A read's
frames are parsed in one pass over the buffer, and a batch of messages is masked with one
call for random bytes and one big-integer XOR per frame. No extension is offered, so every
RSV bit from the server is a protocol error.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import struct
from collections.abc import Iterable, Sequence

import attrs
import h11

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Opcodes (RFC 6455 section 5.2).
_CONTINUATION = 0x0
_TEXT = 0x1
_BINARY = 0x2
_CLOSE = 0x8
_PING = 0x9
_PONG = 0xA

#: Close codes (RFC 6455 section 7.4.1) this module produces itself.
NORMAL_CLOSURE = 1000
NO_STATUS = 1005
ABNORMAL_CLOSURE = 1006
PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007
MESSAGE_TOO_BIG = 1009
#: Codes a peer may put in a close frame; anything else there is a protocol error.
_SENDABLE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)
_MAX_CONTROL_PAYLOAD = 125
#: Random bytes drawn at once for masking keys (1,024 keys).
_KEY_POOL_BYTES = 4096
_MAX_REASON_BYTES = _MAX_CONTROL_PAYLOAD - 2


class HandshakeFailed(Exception):
    """The server's answer to the upgrade request is not a valid WebSocket acceptance."""


@attrs.frozen(slots=True)
class Accepted:
    """The server accepted the upgrade; ``trailing`` is what it sent after its response."""

    headers: tuple[tuple[bytes, bytes], ...]
    trailing: bytes


@attrs.frozen(slots=True)
class Rejected:
    """The server answered the upgrade with an HTTP response; its status, headers and body."""

    status_code: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def accept_token(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value a server must answer the request key ``key`` with."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


class ClientHandshake:
    """The opening handshake of one client connection (RFC 6455 section 4.1).

    :meth:`request` gives the upgrade request's bytes; :meth:`receive_data` takes the
    server's bytes until it returns the outcome (:class:`Accepted` or :class:`Rejected`;
    ``None`` while more is needed) or raises :class:`HandshakeFailed`.
    """

    def __init__(self, host: str, target: str, extra_headers: Sequence[tuple[bytes, bytes]] = ()):
        self._h11 = h11.Connection(h11.CLIENT)
        self._key = base64.b64encode(os.urandom(16))
        self._host = host
        self._target = target
        self._extra_headers = list(extra_headers)
        self._status: int | None = None
        self._headers: tuple[tuple[bytes, bytes], ...] = ()
        self._body: list[bytes] = []

    def request(self) -> bytes:
        """The upgrade request."""
        headers = [
            (b"host", self._host.encode("idna")),
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-key", self._key),
            (b"sec-websocket-version", b"13"),
            *self._extra_headers,
        ]
        data = self._h11.send(h11.Request(method="GET", target=self._target, headers=headers))
        assert data is not None
        return data

    def receive_data(self, data: bytes | bytearray) -> Accepted | Rejected | None:
        """Feed the server's bytes (``b""`` at end of stream); the outcome once known."""
        self._h11.receive_data(bytes(data))
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise HandshakeFailed(f"bad HTTP response to the upgrade: {exc}") from None
            if event is h11.NEED_DATA:
                if data == b"":
                    raise HandshakeFailed("the server closed the connection during the handshake")
                return None
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return self._accepted(event)
                continue  # 1xx other than 101: the final answer follows
            if isinstance(event, h11.Response):
                self._status = event.status_code
                self._headers = tuple((name, value) for name, value in event.headers)
            elif isinstance(event, h11.Data):
                self._body.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)) or event is h11.PAUSED:
                if self._status is None:
                    raise HandshakeFailed("the server closed the connection during the handshake")
                return Rejected(self._status, self._headers, b"".join(self._body))

    def _accepted(self, event: h11.InformationalResponse) -> Accepted:
        headers = tuple((name, value) for name, value in event.headers)
        found = dict(headers)
        connection = {token.strip().lower() for token in found.get(b"connection", b"").split(b",")}
        if b"upgrade" not in connection:
            raise HandshakeFailed("missing header 'Connection: Upgrade'")
        if found.get(b"upgrade", b"").lower() != b"websocket":
            raise HandshakeFailed("missing header 'Upgrade: websocket'")
        if found.get(b"sec-websocket-accept") != accept_token(self._key):
            raise HandshakeFailed("bad Sec-WebSocket-Accept")
        if b"sec-websocket-extensions" in found:
            raise HandshakeFailed("the server chose an extension the client did not offer")
        if b"sec-websocket-protocol" in found:
            raise HandshakeFailed("the server chose a subprotocol the client did not offer")
        trailing, _closed = self._h11.trailing_data
        return Accepted(headers, bytes(trailing))


@attrs.frozen(slots=True)
class Ping:
    """The server pinged; the answer (a pong with the same payload) is already queued."""

    payload: bytes


@attrs.frozen(slots=True)
class Pong:
    """The server answered a ping."""

    payload: bytes


@attrs.frozen(slots=True)
class Closed:
    """The connection ended: the server's close frame, or our own failure of it.

    ``code`` and ``reason`` are what ends the connection (``NO_STATUS`` for a close frame
    without a code). ``by_us`` is true when this side failed the connection (a protocol
    error, a message too big): the close frame saying so is already queued.
    """

    code: int
    reason: str
    by_us: bool = False


class State(enum.Enum):
    """Where the client is in the closing handshake (RFC 6455 section 7)."""

    OPEN = "open"
    #: We sent a close frame and wait for the server's.
    CLOSING = "closing"
    #: Both close frames are exchanged, or the connection failed: nothing more is read.
    CLOSED = "closed"


#: What :meth:`ClientFrames.receive_data` returns: messages (``str`` for text, ``bytes`` for
#: binary) and control events, in the order they arrived.
Event = str | bytes | Ping | Pong | Closed


class ClientFrames:
    """RFC 6455 framing for the client once the handshake is done.

    Bytes the server sent go to :meth:`receive_data`, which returns the messages and
    control events they complete. A ping's pong and a close frame's echo are not sent by
    it: they are queued for :meth:`data_to_send`, which the I/O layer writes out after each
    :meth:`receive_data`. Messages are framed with :meth:`encode_texts`, control frames with
    :meth:`ping` and :meth:`close`; those raise :class:`ProtocolStateError` once the client
    has closed or started to.
    """

    def __init__(self, max_message_size: int, trailing: bytes = b"") -> None:
        self.max_message_size = max_message_size
        self.state = State.OPEN
        self._buffer = bytearray(trailing)
        #: The opcode and fragments of a fragmented message in progress.
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None
        self._fragment_size = 0
        self._outgoing: list[bytes] = []
        self._pool = b""
        self._pool_at = 0

    # ---- sending ------------------------------------------------------------------------

    def encode_texts(self, texts: Iterable[str]) -> bytes:
        """One masked, unfragmented text frame per text, joined."""
        self._check_open()
        payloads = [text.encode() for text in texts]
        keys = self._keys(len(payloads))
        return b"".join([_frame(_TEXT, p, keys[4 * i : 4 * i + 4]) for i, p in enumerate(payloads)])

    def encode_bytes(self, data: bytes) -> bytes:
        """One masked binary frame."""
        self._check_open()
        return _frame(_BINARY, data, self._keys(1))

    def ping(self, payload: bytes) -> bytes:
        """A ping frame (at most 125 bytes of payload)."""
        self._check_open()
        if len(payload) > _MAX_CONTROL_PAYLOAD:
            raise ValueError("a ping payload is at most 125 bytes")
        return _frame(_PING, payload, self._keys(1))

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> bytes:
        """The close frame that starts the closing handshake; the state becomes CLOSING."""
        self._check_open()
        self.state = State.CLOSING
        return _frame(_CLOSE, _close_payload(code, reason), self._keys(1))

    def _keys(self, count: int) -> bytes:
        """``count`` fresh 4-byte masking keys, from the OS's random source.

        Drawn from a pool of :data:`_KEY_POOL_BYTES` random bytes, refilled when spent, so a
        batch costs no system call of its own; every key is still used once.
        """
        size = 4 * count
        at = self._pool_at
        if at + size > len(self._pool):
            self._pool = os.urandom(max(_KEY_POOL_BYTES, size))
            at = 0
        self._pool_at = at + size
        return self._pool[at : at + size]

    def data_to_send(self) -> bytes:
        """The pongs and close echo :meth:`receive_data` queued (``b""`` if none)."""
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def _check_open(self) -> None:
        if self.state is not State.OPEN:
            raise ProtocolStateError(f"cannot send on a connection that is {self.state.value}")

    # ---- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """The messages and control events ``data`` (and what was held before) completes.

        After a :class:`Closed` event nothing more is parsed: the state is CLOSED.
        """
        if self.state is State.CLOSED:
            return []
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data
        events: list[Event] = []
        end = len(view)
        at = 0
        while end - at >= 2:
            first, second = view[at], view[at + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if end - at < 4:
                    break
                length = (view[at + 2] << 8) | view[at + 3]
                header = 4
                if length < 126:
                    return self._fail(
                        events, PROTOCOL_ERROR, "payload length not minimally encoded"
                    )
            elif length == 127:
                if end - at < 10:
                    break
                (length,) = struct.unpack_from("!Q", view, at + 2)
                header = 10
                if length < 1 << 16 or length >> 63:
                    return self._fail(events, PROTOCOL_ERROR, "bad 64-bit payload length")
            if second & 0x80:
                return self._fail(events, PROTOCOL_ERROR, "a server frame is masked")
            if first & 0x70:
                return self._fail(events, PROTOCOL_ERROR, "reserved bits set without an extension")
            opcode = first & 0x0F
            fin = first & 0x80
            # Checked on the header, before waiting for a payload that may never fit.
            if opcode >= _CLOSE:
                if opcode > _PONG:
                    return self._fail(events, PROTOCOL_ERROR, f"unknown opcode {opcode}")
                if not fin or length > _MAX_CONTROL_PAYLOAD:
                    return self._fail(events, PROTOCOL_ERROR, "a fragmented or long control frame")
            elif opcode > _BINARY:
                return self._fail(events, PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif length + self._fragment_size > self.max_message_size:
                return self._fail(
                    events, MESSAGE_TOO_BIG, f"message over {self.max_message_size} bytes"
                )
            if end - at < header + length:
                break
            payload = bytes(view[at + header : at + header + length])
            at += header + length
            if opcode >= _CLOSE:
                if opcode == _PING:
                    if self.state is State.OPEN:
                        self._outgoing.append(_frame(_PONG, payload, self._keys(1)))
                    events.append(Ping(payload))
                elif opcode == _PONG:
                    events.append(Pong(payload))
                else:
                    return self._closed_by_server(events, payload)
                continue
            if opcode in (_TEXT, _BINARY):
                if self._fragment_opcode is not None:
                    return self._fail(
                        events, PROTOCOL_ERROR, "a new message inside a fragmented one"
                    )
                if not fin:
                    self._fragment_opcode = opcode
                    self._fragments.append(payload)
                    self._fragment_size = length
                    continue
                kind, whole = opcode, payload
            else:  # a continuation
                if self._fragment_opcode is None:
                    return self._fail(events, PROTOCOL_ERROR, "a continuation without a message")
                self._fragments.append(payload)
                self._fragment_size += length
                if not fin:
                    continue
                kind, whole = self._fragment_opcode, b"".join(self._fragments)
                self._fragments.clear()
                self._fragment_opcode = None
                self._fragment_size = 0
            # A whole message; after our close frame, data is read and dropped.
            if self.state is State.CLOSING:
                continue
            if kind == _TEXT:
                try:
                    events.append(whole.decode())
                except UnicodeDecodeError:
                    return self._fail(events, INVALID_PAYLOAD, "text message is not UTF-8")
            else:
                events.append(whole)
        if at:
            if view is buffer:
                del buffer[:at]
            else:
                buffer += view[at:]
        elif view is not buffer:
            buffer += view
        return events

    def _closed_by_server(self, events: list[Event], payload: bytes) -> list[Event]:
        if not payload:
            code, reason = NO_STATUS, ""
        elif len(payload) == 1:
            return self._fail(events, PROTOCOL_ERROR, "a close frame with a 1-byte payload")
        else:
            code = (payload[0] << 8) | payload[1]
            if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
                return self._fail(events, PROTOCOL_ERROR, f"close code {code} is not allowed")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                return self._fail(events, INVALID_PAYLOAD, "close reason is not UTF-8")
        if self.state is State.OPEN:
            # Echo the server's code (RFC 6455 section 5.5.1); a frame without one is answered so.
            echo = code if code != NO_STATUS else NORMAL_CLOSURE
            self._outgoing.append(_frame(_CLOSE, _close_payload(echo, ""), self._keys(1)))
        self._end()
        events.append(Closed(code, reason))
        return events

    def _fail(self, events: list[Event], code: int, reason: str) -> list[Event]:
        """Fail the connection (RFC 6455 section 7.1.7): queue our close frame unless one
        went out already."""
        if self.state is State.OPEN:
            self._outgoing.append(_frame(_CLOSE, _close_payload(code, reason), self._keys(1)))
        self._end()
        events.append(Closed(code, reason, by_us=True))
        return events

    def _end(self) -> None:
        self.state = State.CLOSED
        self._buffer.clear()
        self._fragments.clear()
        self._fragment_opcode = None


class ProtocolStateError(Exception):
    """A frame was asked for in a state that cannot send it (after a close)."""


def _close_payload(code: int, reason: str) -> bytes:
    encoded = reason.encode()
    if len(encoded) > _MAX_REASON_BYTES:
        encoded = encoded[:_MAX_REASON_BYTES].decode(errors="ignore").encode()
    return code.to_bytes(2, "big") + encoded


def _frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One final, masked frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if not n:
        return header + key
    return header + key + mask(payload, key)


def mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``key`` (RFC 6455 section 5.3)."""
    n = len(payload)
    repeated = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
