"""The socket tasks over memory streams, and end-to-end dials over real 127.0.0.1 sockets."""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import time
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
import trustme
from trio_websocket import WebSocketConnection, WebSocketRequest

from protocol import Frame, FrameError, Inbound, OutboundResult, Send, verify_token
from relay_runtime import _transport as transport_module
from relay_runtime._supervisor import Supervisor
from relay_runtime._transport import (
    DialError,
    RelaySocket,
    bearer_headers,
    dial,
    frames_to,
    websocket_dialer,
)
from relay_runtime._websocket import wrap_client_stream
from tests.runtime.conftest import GATEWAY_ID, SECRET, descriptor, make_config, wrap_client
from tests.streams import CountingStream


async def socket_pair(nursery: trio.Nursery, **kw: Any) -> tuple[RelaySocket, WebSocketConnection]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    accepted: list[WebSocketConnection] = []
    done = trio.Event()

    async def server() -> None:
        request = await trio_websocket.wrap_server_stream(nursery, server_stream)
        accepted.append(await request.accept())
        done.set()

    nursery.start_soon(server)
    ws = await wrap_client(nursery, client_stream, [], 1 << 24)
    await done.wait()
    options: dict[str, Any] = {"max_frame_bytes": 1024, "ping_interval_s": 30, "ping_timeout_s": 60}
    options.update(kw)
    return RelaySocket(ws, **options), accepted[0]


async def test_R2_R7_reader_decodes_split_and_batched_frames_and_survives_errors(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    sock, peer = await socket_pair(nursery)
    seen: list[Frame | FrameError] = []

    async def on_item(item: Frame | FrameError) -> None:
        seen.append(item)
        if isinstance(item, OutboundResult) and item.request_id == "boom":
            raise RuntimeError("handler bug")

    ended: list[Any] = []

    async def read() -> None:
        ended.append(await sock.reader(frames_to(on_item, sock.max_frame_bytes)))

    nursery.start_soon(read)
    inbound = json.dumps({"type": "inbound", "event": {"text": "héllo"}}) + "\n"
    raw = inbound.encode()
    await peer.send_message(raw[:5])  # binary, split mid-frame ...
    await peer.send_message(raw[5:-3])  # ... and mid-UTF-8 is fine too
    await peer.send_message(raw[-3:])
    await peer.send_message(
        '{"type":"outbound_result","requestId":"boom"}\nnot json\n\r\n'
        '{"type":"outbound_result","requestId":"ok"}\r\n'
    )
    await peer.send_message("x" * 2000 + "\n" + '{"type":"going_idle_ack"}\n')
    await peer.aclose(4000, "bye")
    await trio.testing.wait_all_tasks_blocked()
    kinds = [type(x).__name__ if not isinstance(x, FrameError) else x.kind for x in seen]
    assert kinds == [
        "Inbound",
        "OutboundResult",
        "malformed",
        "OutboundResult",
        "oversized",
        "GoingIdleAck",
    ]
    first = seen[0]
    assert isinstance(first, Inbound) and first.event.text == "héllo"
    assert ended[0].code == 4000 and ended[0].reason == "bye"


async def test_writer_sends_one_text_message_per_frame_in_order(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    sock, peer = await socket_pair(nursery)
    nursery.start_soon(sock.writer)
    results: list[str | None] = []

    async def write(i: int) -> None:
        results.append(await sock.write(f'{{"type":"t{i}"}}\n'))

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(write, i)
    got = [await peer.get_message() for _ in range(20)]
    assert sorted(got) == sorted(f'{{"type":"t{i}"}}\n' for i in range(20))
    assert all(isinstance(m, str) and m.count("\n") == 1 for m in got)
    assert results == [None] * 20
    assert sock.too_large('{"x":"' + "é" * 600 + '"}\n')


async def test_write_after_close_reports_failure(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    sock, peer = await socket_pair(nursery)
    nursery.start_soon(sock.writer)

    async def drain_peer() -> None:
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            await peer.get_message()

    nursery.start_soon(drain_peer)
    await sock.close(1000, "bye")
    assert await sock.write('{"type":"x"}\n') == "connection closed"
    assert sock.end_from(None).code == 1000


async def test_R48_keepalive_declares_a_silent_peer_dead(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    c2s_send, c2s_recv = trio.testing.memory_stream_one_way_pair()
    s2c_send, s2c_recv = trio.testing.memory_stream_one_way_pair()
    ready = trio.Event()

    async def server() -> None:
        req = await trio_websocket.wrap_server_stream(
            nursery, trio.StapledStream(s2c_send, c2s_recv)
        )
        await req.accept()
        ready.set()

    nursery.start_soon(server)
    ws = await wrap_client(nursery, trio.StapledStream(c2s_send, s2c_recv), [], 1 << 20)
    await ready.wait()
    sock = RelaySocket(ws, max_frame_bytes=1024, ping_interval_s=30, ping_timeout_s=60)
    c2s_send.send_all_hook = None  # the peer never hears our pings
    start = trio.current_time()
    async with trio.open_nursery() as n:
        await sock.keepalive(n)
        n.cancel_scope.cancel()  # its unanswered pings, as the socket nursery would
    # Declared dead at exactly 60 s, then at most 5 s for the unanswered close frame.
    assert 60.0 <= trio.current_time() - start <= 65.0
    assert sock.end_from(None).code == 1011
    assert sock.end_from(None).reason == "keepalive timeout"


async def test_dial_maps_failures_to_dial_error(autojump_clock: trio.testing.MockClock) -> None:
    async def refused(nursery: trio.Nursery, url: str, **kw: Any) -> Any:
        raise OSError("connection refused")

    async def hangs(nursery: trio.Nursery, url: str, **kw: Any) -> Any:
        await trio.sleep_forever()

    async with trio.open_nursery() as n:
        with pytest.raises(DialError, match="connection refused"):
            await dial(refused, n, "ws://x/relay", headers=[], max_message_size=1, timeout_s=5)
        with pytest.raises(DialError, match="timed out after 30 s"):
            await dial(hangs, n, "ws://x/relay", headers=[], max_message_size=1, timeout_s=30)
    assert bearer_headers(None) == []
    assert bearer_headers("t") == [(b"authorization", b"Bearer t")]


# ---- end to end over real loopback (no autojump) -----------------------------------------


def relay_handler(seen_tokens: list[str | None]) -> Any:
    """A minimal connector: verifies the bearer, answers hello, outbound and going_idle."""

    async def handler(request: WebSocketRequest) -> None:
        auth = dict(request.headers).get(b"authorization", b"").decode()
        seen_tokens.append(verify_token(auth.removeprefix("Bearer "), [SECRET], now=time.time()))
        ws = await request.accept()
        while True:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            assert isinstance(message, str)
            for line in message.splitlines():
                frame = json.loads(line)
                if frame["type"] == "hello":
                    out = {"type": "descriptor", "descriptor": descriptor(frame["platform"])}
                elif frame["type"] == "outbound":
                    out = {
                        "type": "outbound_result",
                        "requestId": frame["requestId"],
                        "result": {"success": True, "message_id": "m1"},
                    }
                elif frame["type"] == "going_idle":
                    out = {"type": "going_idle_ack"}
                else:
                    continue
                await ws.send_message(json.dumps(out) + "\n")

    return handler


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_e2e_loopback_handshake_outbound_and_go_idle(
    nursery: trio.Nursery, trusted_ca: trustme.CA, tls: bool
) -> None:
    """A real dial on 127.0.0.1, plain and over TLS (the certificate verified): READY, an
    outbound round trip, going idle."""
    server_context = None
    if tls:
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trusted_ca.issue_cert("127.0.0.1").configure_cert(server_context)
    seen_tokens: list[str | None] = []
    server = await nursery.start(
        trio_websocket.serve_websocket, relay_handler(seen_tokens), "127.0.0.1", 0, server_context
    )
    send, _recv = trio.open_memory_channel[Any](8)
    sup = Supervisor(
        make_config(relay_url=f"{'wss' if tls else 'ws'}://127.0.0.1:{server.port}"),
        inbound=send,
        on_interrupt=lambda key, chat: None,
        dialer=websocket_dialer,
    )
    with trio.fail_after(10):
        await nursery.start(sup.run)
        assert sup.state == "ready"
        assert seen_tokens == [GATEWAY_ID]
        result = await sup.outbound.request(Send("c1", "hello"))
        assert result.success and result.message_id == "m1"
        assert await sup.go_idle() is True
    assert sup.state == "closed"


async def test_e2e_loopback_http_401_before_handshake_ladders(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rejected = 0
    third = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        nonlocal rejected
        rejected += 1
        if rejected == 3:
            third.set()
        await request.reject(401)

    server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    send, _recv = trio.open_memory_channel[Any](8)
    sup = Supervisor(
        make_config(
            relay_url=f"ws://127.0.0.1:{server.port}", backoff_base_s=0.01, backoff_cap_s=0.02
        ),
        inbound=send,
        on_interrupt=lambda key, chat: None,
    )
    nursery.start_soon(sup.run)
    with trio.fail_after(10):
        await third.wait()
    assert sup.state in ("backoff", "dialing")
    assert any("HTTP 401" in r.getMessage() for r in caplog.records)
    sup.stop()
    assert sup.state == "closed"


async def test_writer_writes_every_queued_frame_in_one_stream_write_in_order(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    sock, peer = await socket_pair(nursery)
    counting = CountingStream(sock.ws._stream)
    sock.ws._stream = counting  # type: ignore[assignment]
    texts = [f'{{"type":"t{i}"}}\n' for i in range(10)]
    jobs = [sock.enqueue_nowait(text) for text in texts]
    nursery.start_soon(sock.writer)
    got = [await peer.get_message() for _ in texts]
    assert got == texts  # one text message per frame, in queue order
    assert counting.writes == 1
    assert sock.frames_out == 10
    assert all(job is not None and job.finished and job.error is None for job in jobs)


async def test_send_texts_refuses_a_closed_connection(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    sock, peer = await socket_pair(nursery)

    async def drain_peer() -> None:
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            await peer.get_message()

    nursery.start_soon(drain_peer)
    await sock.ws.aclose(1000, "bye")
    with pytest.raises(trio_websocket.ConnectionClosed):
        await sock.ws.send_texts(['{"type":"x"}\n'])


async def test_send_texts_on_a_broken_stream_closes_1006_and_releases_the_lock(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    sock, _peer = await socket_pair(nursery)

    class Broken(CountingStream):
        async def send_all(self, data: bytes) -> None:
            raise trio.BrokenResourceError("peer went away")

    sock.ws._stream = Broken(sock.ws._stream)  # type: ignore[assignment]
    with pytest.raises(trio_websocket.ConnectionClosed) as caught:
        await sock.ws.send_texts(['{"type":"x"}\n', '{"type":"y"}\n'])
    assert caught.value.reason.code == 1006
    assert not sock.ws._send_lock.locked()


async def test_queue_reports_the_write_and_a_frame_the_socket_ended_before(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    sock, peer = await socket_pair(nursery)
    reports: list[str | None] = []
    assert await sock.queue('{"type":"a"}\n', reports.append) is None
    assert reports == []  # queued, not written: the caller does not wait for the write
    writer_done = trio.Event()

    async def writer() -> None:
        await sock.writer()
        writer_done.set()

    nursery.start_soon(writer)
    assert await peer.get_message() == '{"type":"a"}\n'
    assert reports == [None]

    async def drain_peer() -> None:
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            while True:
                await peer.get_message()

    nursery.start_soon(drain_peer)
    await sock.close(1000, "bye")
    # The writer fails on the closed connection; what it held and what was queued fail too.
    assert await sock.queue('{"type":"b"}\n', reports.append) is None
    await writer_done.wait()
    assert reports == [None, "connection closed"]
    assert await sock.queue('{"type":"c"}\n', reports.append) == "connection closed"


async def test_take_message_hands_over_every_message_already_read_in_order(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    accepted: list[WebSocketConnection] = []

    async def server() -> None:
        request = await trio_websocket.wrap_server_stream(nursery, server_stream)
        accepted.append(await request.accept())

    nursery.start_soon(server)
    ws = await wrap_client_stream(
        nursery, client_stream, "relay.test", "/relay", message_queue_size=4
    )
    await trio.testing.wait_all_tasks_blocked()
    assert ws.take_message() is None  # nothing read yet: the caller waits in get_message
    peer = accepted[0]
    for i in range(6):  # more than the queue holds: the client's reader waits for room
        await peer.send_message(f"m{i}")
    await trio.testing.wait_all_tasks_blocked()
    got = []
    while (message := ws.take_message()) is not None:
        got.append(message)
    # The four queued, plus the one the waiting reader handed over as room came.
    assert got == ["m0", "m1", "m2", "m3", "m4"]
    await trio.testing.wait_all_tasks_blocked()  # room again: the reader goes on
    assert [ws.take_message(), ws.take_message()] == ["m5", None]
    await ws.aclose(1000, "bye")
    with pytest.raises(trio_websocket.ConnectionClosed):
        ws.take_message()


async def test_an_idle_reader_has_messages_handled_inline_and_the_rest_keeps_order(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    sock, peer = await socket_pair(nursery)
    seen: list[str] = []
    release = trio.Event()

    async def on_message(message: str | bytes) -> None:
        seen.append(f"waited:{message!s}")

    def on_message_nowait(message: str | bytes) -> Any:
        assert isinstance(message, str)
        if message == "boom":
            raise RuntimeError("handler bug")
        seen.append(f"inline:{message}")
        if message != "block":
            return None

        async def rest() -> None:
            await release.wait()
            seen.append("rest of block")

        return rest

    nursery.start_soon(sock.reader, on_message, on_message_nowait)
    await peer.send_message("a")
    await trio.testing.wait_all_tasks_blocked()
    assert seen == ["inline:a"]
    assert not sock.paused
    await peer.send_message("block")
    await trio.testing.wait_all_tasks_blocked()
    assert sock.paused  # the reader waits for the rest: backpressure, not a dead peer
    await peer.send_message("c")
    await peer.send_message("d")
    await trio.testing.wait_all_tasks_blocked()
    assert seen == ["inline:a", "inline:block"]  # c and d queue behind the rest
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert seen == ["inline:a", "inline:block", "rest of block", "waited:c", "waited:d"]
    with caplog.at_level(logging.ERROR, logger="relay_runtime.transport"):
        await peer.send_message("boom")
        await peer.send_message("e")
        await trio.testing.wait_all_tasks_blocked()
    assert seen[-1] == "inline:e"  # an exception is logged; the next message goes on
    assert any("reader continues" in r.getMessage() for r in caplog.records)


@pytest.fixture
def trusted_ca(monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """A CA the dialer trusts (as if in the system store), for TLS on 127.0.0.1."""
    ca = trustme.CA()
    default_context = ssl.create_default_context

    def context_trusting_ca(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = default_context(*args, **kwargs)
        ca.configure_trust(context)
        return context

    monkeypatch.setattr(transport_module.ssl, "create_default_context", context_trusting_ca)
    return ca


async def test_wss_dial_refuses_a_certificate_it_does_not_trust(
    nursery: trio.Nursery, trusted_ca: trustme.CA
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_context)  # another CA
    server = await nursery.start(
        trio_websocket.serve_websocket, relay_handler([]), "127.0.0.1", 0, server_context
    )
    with pytest.raises(DialError, match=r"SSLCertVerificationError: .*CERTIFICATE_VERIFY_FAILED"):
        await dial(
            websocket_dialer,
            nursery,
            f"wss://127.0.0.1:{server.port}/relay",
            headers=[],
            max_message_size=1 << 20,
            timeout_s=10,
        )
