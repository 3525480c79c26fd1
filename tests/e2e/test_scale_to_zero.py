"""Scale to zero end to end: suspend, stop, poke, wake, drain (RC §8; issue "Control plane").

A gateway with a confirmed wake URL suspends (``going_idle`` acked, the connector flips it to
buffered-only delivery) and then stops, as a scaled-to-zero deployment does. A message that
arrives meanwhile is buffered and makes the connector poke the wake URL. The deployment's
wake endpoint (here: a loopback HTTP server in the test) starts a fresh gateway on the same
state dir, which dials, drains the buffer and answers. Real sockets on 127.0.0.1 throughout.
"""

from __future__ import annotations

import secrets
from functools import partial
from pathlib import Path

import httpx
import trio

from protocol import MessageEvent, SessionSource
from relay_runtime import GatewayConfig, Turn, run_gateway
from relay_runtime.connector import ReferenceConnector
from relay_runtime.connector._control_plane import ControlPlaneRegistry, WakePoker

GATEWAY_ID = "gw-sleepy"
LIMIT_S = 20


async def echo(turn: Turn) -> str:
    return f"re: {turn.text}"


def message(text: str) -> MessageEvent:
    source = SessionSource(platform="discord", chat_id="c1", chat_type="dm", user_id="u1")
    return MessageEvent(text=text, source=source, message_id=f"m-{text}")


async def test_a_suspended_gateway_is_woken_by_the_poke_and_drains_the_buffer(
    tmp_path: Path,
) -> None:
    secret = secrets.token_urlsafe(32)
    registry = ControlPlaneRegistry()
    record = registry.pin_gateway(GATEWAY_ID, secret)
    wake_hits: list[bytes] = []
    config: GatewayConfig | None = None

    async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:

        async def wake_endpoint(stream: trio.SocketStream) -> None:
            """The deployment's autostart: a GET starts a fresh gateway process."""
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                request += chunk
            wake_hits.append(request.split(b"\r\n", 1)[0])
            assert config is not None
            nursery.start_soon(partial(run_gateway, config, echo))
            await stream.send_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

        listeners = await nursery.start(partial(trio.serve_tcp, wake_endpoint, 0, host="127.0.0.1"))
        wake_url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/wake"
        record.wake_urls[None] = wake_url  # what provision/enroll record for the gateway

        connector = ReferenceConnector(registry=registry, poker=WakePoker(client))
        await nursery.start(connector.serve, "127.0.0.1", 0)
        config = GatewayConfig(
            relay_url=connector.base_url,
            gateway_id=GATEWAY_ID,
            secret=secret,
            state_dir=tmp_path,
            platform="discord",
            trust="open",
            wake_url=wake_url,
            wake_confirmed=True,
        )

        with trio.fail_after(LIMIT_S):
            # First life: serve, then suspend and stop (scaled to zero).
            async with trio.open_nursery() as life:
                gateway = await life.start(run_gateway, config, echo)
                assert gateway.can_suspend()
                assert await gateway.suspend()
                life.cancel_scope.cancel()
            assert connector.is_buffered_only(GATEWAY_ID)
            assert wake_hits == []

            # A message for the sleeping gateway: buffered, and the connector pokes once.
            delivery = await connector.inject(message("are you there?"), gateway_id=GATEWAY_ID)
            assert delivery.outcome == "buffered"
            await connector.wait_for(
                lambda: "re: are you there?" in [m.content for m in connector.messages.values()]
            )
            await connector.wait_for(lambda: not connector.buffered(GATEWAY_ID))

        assert wake_hits == [b"GET /wake HTTP/1.1"]
        assert connector.pokes == [wake_url]
        assert len(connector.inbound_acks) == 1  # the replay was acked after its turn
        nursery.cancel_scope.cancel()
