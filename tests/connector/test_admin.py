"""The operator routes (``/admin/*``) over a real connector, a raw gateway peer and httpx.

Everything on real loopback sockets; waits synchronise on frames or on the connector.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from protocol import DescriptorFrame, Inbound, InboundAck, Outbound, OutboundResult, Send
from relay_runtime.connector import Post, ReferenceConnector
from relay_runtime.connector._admin import AdminApi, operator_app
from relay_runtime.connector._control_plane import (
    ControlPlane,
    ControlPlaneRegistry,
    HttpServer,
    serve_http,
)

from .peer import GATEWAY, SECRET, Peer, dial, good_headers

LIMIT = 10
TOKEN = "admin-token-0123456789"


class Admin:
    """A connector with its operator app on loopback, and an httpx client for it."""

    def __init__(
        self, connector: ReferenceConnector, server: HttpServer, client: httpx.AsyncClient
    ) -> None:
        self.connector = connector
        self.server = server
        self.client = client

    async def post(self, route: str, token: str | None = TOKEN, **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.client.post(
            f"{self.server.url}/admin/{route}", json=body, headers=headers
        )

    async def ok(self, route: str, **body: Any) -> dict[str, Any]:
        response = await self.post(route, **body)
        assert response.status_code == 200, response.text
        reply: dict[str, Any] = response.json()
        return reply


async def start_admin(
    nursery: trio.Nursery, token: str | None = TOKEN, **options: Any
) -> AsyncIterator[Admin]:
    registry = ControlPlaneRegistry()
    options.setdefault("secrets", {GATEWAY: SECRET})
    connector = ReferenceConnector(registry=registry, **options)
    await nursery.start(connector.serve)
    app = operator_app(ControlPlane(registry), AdminApi(connector, token, registry))
    server: HttpServer = await nursery.start(
        lambda task_status: serve_http(app, task_status=task_status)
    )
    async with httpx.AsyncClient() as client:
        yield Admin(connector, server, client)


@pytest.fixture
async def admin(nursery: trio.Nursery) -> AsyncIterator[Admin]:
    async for value in start_admin(nursery):
        yield value


async def connect(admin: Admin, peer: Peer) -> None:
    await peer.hello("relay")
    await peer.expect(DescriptorFrame)
    await admin.connector.wait_connected(GATEWAY)


# -- protection -------------------------------------------------------------------------------


async def test_admin_routes_need_the_token(admin: Admin) -> None:
    assert (await admin.post("status", token=None)).status_code == 401
    wrong = await admin.post("status", token="admin-token-0123456780")
    assert (wrong.status_code, wrong.json()) == (401, {"error": "admin token missing or wrong"})
    assert (await admin.post("status")).status_code == 200
    missing = await admin.post("nope")
    assert (missing.status_code, missing.json()) == (404, {"error": "no such route: /admin/nope"})
    get = await admin.client.get(f"{admin.server.url}/admin/inject")
    assert (get.status_code, get.headers["allow"]) == (405, "POST")
    # The control plane's own routes are still served next to the admin ones.
    provision = await admin.client.post(f"{admin.server.url}/relay/provision", json={})
    assert provision.status_code == 401


async def test_without_an_admin_token_every_admin_route_is_off(nursery: trio.Nursery) -> None:
    async for admin in start_admin(nursery, token=None):
        response = await admin.post("status", token="anything")
        assert response.status_code == 403
        assert "admin routes are disabled" in response.json()["error"]


@pytest.mark.parametrize(
    ("route", "body", "problem"),
    [
        ("inject", {}, "missing field: text"),
        ("inject", {"text": 5}, "text must be a string"),
        ("inject", {"text": "x", "buffered": "yes"}, "buffered must be a boolean"),
        ("inject", {"text": "x", "gatewayId": "gw-other"}, None),
        ("wait", {"until": "later"}, "until must be connected, disconnected, drained or journal"),
        ("wait", {"until": "connected", "timeoutS": -1}, "timeoutS must be a number from 0 to 600"),
        ("journal", {"after": "1"}, "after must be a number from 0 to 1e+12"),
    ],
)  # fmt: skip
async def test_bad_admin_bodies_are_400_naming_the_field(
    admin: Admin, route: str, body: dict[str, Any], problem: str | None
) -> None:
    response = await admin.post(route, **body)
    if problem is None:  # an unknown gateway id is fine: its messages are buffered for it
        assert response.json()["outcome"] == "buffered"
        return
    assert (response.status_code, response.json()) == (400, {"error": problem})


async def test_a_body_that_is_not_json_or_too_deep_is_400(admin: Admin) -> None:
    url = f"{admin.server.url}/admin/inject"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for content, problem in (
        (b"{", "body is not valid JSON"),
        (b"[]", "body must be a JSON object"),
        (b"[" * 100_000, "body is nested too deeply"),
    ):
        response = await admin.client.post(url, content=content, headers=headers)
        assert (response.status_code, response.json()) == (400, {"error": problem})


async def test_an_ambiguous_gateway_must_be_named(nursery: trio.Nursery) -> None:
    async for admin in start_admin(nursery, secrets={"gw-a": SECRET, "gw-b": SECRET}):
        response = await admin.post("inject", text="hi")
        assert response.status_code == 400
        assert response.json()["error"] == (
            "several gateways are known ('gw-a', 'gw-b'); pass gatewayId"
        )


# -- the operator's day -----------------------------------------------------------------------


async def test_inject_live_then_the_journal_shows_the_reply(admin: Admin) -> None:
    with trio.fail_after(LIMIT):
        async with dial(admin.connector.url, good_headers()) as peer:
            await connect(admin, peer)
            status = await admin.ok("wait", until="connected", timeoutS=5)
            assert status["gateways"][0] | {"connected": True} == status["gateways"][0]
            reply = await admin.ok(
                "inject", text="hello", chatId="c1", userId="alice", platform="relay"
            )
            assert reply == {"gatewayId": GATEWAY, "outcome": "live"}
            inbound = await peer.expect(Inbound)
            assert inbound.buffer_id is None
            assert (inbound.event.text, inbound.event.source.user_id) == ("hello", "alice")
            send = Send(chat_id="c1", content="echo: hello")
            await peer.send(Outbound(request_id="a" * 32, action=send, platform="relay"))
            await peer.expect(OutboundResult)
            waited = await admin.ok("wait", until="journal", count=1, timeoutS=5)
            assert waited["journal"] == 1
            journal = await admin.ok("journal")
    assert journal["next"] == 1
    (entry,) = journal["entries"]
    assert entry | {"at": 0} == {
        "seq": 1,
        "at": 0,
        "gatewayId": GATEWAY,
        "platform": "relay",
        "op": "send",
        "chatId": "c1",
        "messageId": "m-1",
        "content": "echo: hello",
        "requestId": "a" * 32,
    }
    assert (await admin.ok("journal", after=1))["entries"] == []


async def test_hold_buffers_flush_replays_and_acks_drain(admin: Admin) -> None:
    with trio.fail_after(LIMIT):
        async with dial(admin.connector.url, good_headers()) as peer:
            await connect(admin, peer)
            held = await admin.ok("hold")
            assert (held["bufferedOnly"], held["connected"]) == (True, True)
            first = await admin.ok("inject", text="one")
            second = await admin.ok("inject", text="two", chatId="c2")
            assert first["outcome"] == second["outcome"] == "buffered"
            listed = await admin.ok("buffer")
            assert [(e["bufferId"], e["text"], e["chatId"]) for e in listed["entries"]] == [
                (first["bufferId"], "one", "chat-1"),
                (second["bufferId"], "two", "c2"),
            ]
            assert listed["buffered"] == 2
            assert (await admin.ok("flush"))["replaying"] == 2
            for expected in (first, second):
                frame = await peer.expect(Inbound)
                assert frame.buffer_id == expected["bufferId"]
                await peer.send(InboundAck(buffer_id=frame.buffer_id))
            drained = await admin.ok("wait", until="drained", timeoutS=5)
            assert drained["gateways"][0]["buffered"] == 0
            await admin.connector.wait_for(lambda: not admin.connector.is_buffered_only(GATEWAY))
            # Back to live delivery.
            assert (await admin.ok("inject", text="three"))["outcome"] == "live"


async def test_inject_buffered_goes_through_the_buffer_with_a_buffer_id(admin: Admin) -> None:
    with trio.fail_after(LIMIT):
        async with dial(admin.connector.url, good_headers()) as peer:
            await connect(admin, peer)
            reply = await admin.ok("inject", text="via buffer", buffered=True)
            frame = await peer.expect(Inbound)
    assert reply["outcome"] == "buffered"
    assert frame.buffer_id == reply["bufferId"]


async def test_flush_without_a_connection_is_409(admin: Admin) -> None:
    await admin.ok("inject", text="for later")
    response = await admin.post("flush")
    assert response.status_code == 409
    assert response.json()["error"] == (
        f"gateway {GATEWAY!r} is not connected; its buffer is replayed when it reconnects"
    )


async def test_revoke_closes_the_live_socket_4401_and_refuses_the_gateway(admin: Admin) -> None:
    with trio.fail_after(LIMIT):
        async with dial(admin.connector.url, good_headers()) as peer:
            await connect(admin, peer)
            reply = await admin.ok("revoke")
            with pytest.raises(ConnectionClosed) as closed:
                await peer.next()
        await admin.ok("wait", until="disconnected", timeoutS=5)
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (4401, "unauthorized")
    assert (reply["closed"], reply["revoked"]) == (1, True)
    status = await admin.ok("status")
    assert status["gateways"][0] | {"revoked": True, "connected": False} == status["gateways"][0]


async def test_wait_times_out_with_504(admin: Admin) -> None:
    response = await admin.post("wait", until="connected", timeoutS=0)
    assert response.status_code == 504
    assert response.json() == {
        "error": f"timed out after 0 s waiting for gateway {GATEWAY!r} connected"
    }


async def test_the_journal_sink_sees_every_post(nursery: trio.Nursery) -> None:
    posts: list[Post] = []
    async for admin in start_admin(nursery):
        admin.connector.journal_sink = posts.append
        with trio.fail_after(LIMIT):
            async with dial(admin.connector.url, good_headers()) as peer:
                await connect(admin, peer)
                send = Send(chat_id="c9", content="hi")
                await peer.send(Outbound(request_id="b" * 32, action=send))
                await peer.expect(OutboundResult)
                # A repeat of the requestId egresses nothing, so it is not journalled.
                await peer.send(Outbound(request_id="b" * 32, action=send))
                await peer.expect(OutboundResult)
    assert [json.loads(json.dumps(p.to_json()))["content"] for p in posts] == ["hi"]
    assert list(admin.connector.journal) == posts


# -- the subcommands against a running connector ------------------------------------------------


async def run_cli(*args: str, **env: str) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_RELAY_", "RELAY_"))}
    done = await trio.run_process(
        [sys.executable, "-m", "relay_runtime", "connector", *args],
        env=base | env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_subcommands_print_json_lines_and_failures_as_one_line(admin: Admin) -> None:
    env = {"RELAY_CONNECTOR_URL": admin.server.url, "RELAY_CONNECTOR_ADMIN_TOKEN": TOKEN}
    with trio.fail_after(60):
        code, out, err = await run_cli("inject", "--chat", "c5", "hello there", **env)
        assert (code, err) == (0, "")
        assert json.loads(out)["outcome"] == "buffered"  # nothing connected: kept for later
        code, out, _ = await run_cli("buffer", **env)
        assert [json.loads(line)["text"] for line in out.splitlines()] == ["hello there"]
        code, out, err = await run_cli("flush", **env)
        assert (code, out) == (1, "")
        assert err == (
            "relay-runtime: error: connector refused flush (HTTP 409): gateway 'gw-test' is "
            "not connected; its buffer is replayed when it reconnects\n"
        )
        code, _, err = await run_cli("status", **(env | {"RELAY_CONNECTOR_ADMIN_TOKEN": "bad"}))
        assert (code, err) == (
            1,
            "relay-runtime: error: connector refused status (HTTP 401): admin token missing "
            "or wrong\n",
        )


@pytest.mark.parametrize(
    ("args", "env", "code", "problem"),
    [
        (["status"], {"RELAY_CONNECTOR_ADMIN_TOKEN": "t"}, 2, "no connector URL; pass --url or set RELAY_CONNECTOR_URL"),
        (["status", "--url", "http://127.0.0.1:9"], {}, 2, "no admin token; set RELAY_CONNECTOR_ADMIN_TOKEN or pass --admin-token-file"),
        (["wait", "connected", "--timeout", "700", "--url", "http://127.0.0.1:9"], {"RELAY_CONNECTOR_ADMIN_TOKEN": "t"}, 2, "--timeout must be 0-600 seconds, not 700.0"),
        (["journal", "--after", "-1", "--url", "http://127.0.0.1:9"], {"RELAY_CONNECTOR_ADMIN_TOKEN": "t"}, 2, "--after must be >= 0, not -1"),
        (["status", "--url", "http://127.0.0.1:9"], {"RELAY_CONNECTOR_ADMIN_TOKEN": "t"}, 1, "cannot reach the connector at http://127.0.0.1:9: "),
    ],
)  # fmt: skip
async def test_subcommand_usage_errors(
    args: list[str], env: dict[str, str], code: int, problem: str
) -> None:
    with trio.fail_after(60):
        got, out, err = await run_cli(*args, **env)
    assert (got, out) == (code, "")
    assert err.startswith("relay-runtime: error: " + problem), err
    assert err.count("\n") == 1
