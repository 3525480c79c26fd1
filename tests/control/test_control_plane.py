"""The reference connector's HTTP control plane on real loopback, and the wake poker."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from protocol import make_token, make_upgrade_token, verify_token
from relay_runtime._control import provision as gateway_provision
from relay_runtime.config import GatewayConfig
from relay_runtime.connector import RelevancePolicy
from relay_runtime.connector._control_plane import (
    ControlPlane,
    ControlPlaneRegistry,
    HttpRequest,
    HttpResponse,
    HttpServer,
    WakePoker,
)

from .conftest import IDENTITY_TOKEN, TENANT

App = Callable[[HttpRequest], Awaitable[HttpResponse]]

PROVISION_BODY = {
    "gatewayId": "gw-test",
    "platform": "discord",
    "botId": "B1",
    "gatewayEndpoint": "",
    "routeKeys": ["guild-1"],
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def provision(
    client: httpx.AsyncClient, plane: HttpServer, **extra: object
) -> dict[str, Any]:
    response = await client.post(
        f"{plane.url}/relay/provision",
        json=PROVISION_BODY | extra,
        headers=bearer(IDENTITY_TOKEN),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_provision_mints_a_secret_that_verify_token_accepts(
    plane: HttpServer, registry: ControlPlaneRegistry
) -> None:
    async with httpx.AsyncClient() as client:
        body = await provision(client, plane)
    assert body["gatewayId"] == "gw-test"
    assert body["tenant"] == TENANT
    assert body["routeKeys"] == ["guild-1"]
    assert body["deliveryKey"]
    token = make_upgrade_token("gw-test", body["secret"])
    assert verify_token(token, registry.secrets_for("gw-test")) == "gw-test"
    assert registry.verify_bearer(token) == "gw-test"
    assert registry.verify_bearer(make_upgrade_token("gw-test", "wrong-secret" * 3)) is None


async def test_provision_records_identities_and_the_instance_wake_url(
    plane: HttpServer, registry: ControlPlaneRegistry
) -> None:
    async with httpx.AsyncClient() as client:
        await provision(client, plane, instanceId="i-1", wakeUrl="https://wake.example/i-1/")
        await provision(client, plane, platform="telegram", botId="T1")
    record = registry.gateways["gw-test"]
    assert [(i.platform, i.bot_id) for i in record.identities] == [
        ("discord", "B1"),
        ("telegram", "T1"),
    ]
    assert registry.wake_url_for("gw-test", "i-1") == "https://wake.example/i-1"
    assert registry.wake_url_for("gw-test", "other") is None
    assert registry.wake_url_for("nobody") is None
    # One boot's provision burst shares one secret (RC §9: the gateway keeps the first).
    assert len(registry.secrets_for("gw-test")) == 1


async def test_secret_rotation_window_counts_from_when_a_secret_was_superseded() -> None:
    now = [1000.0]
    registry = ControlPlaneRegistry(rotation_window_s=60, clock=lambda: now[0])
    record = registry.record_for("gw", TENANT)
    first = registry.mint_secret(record)
    now[0] += 300  # long past the window since issue: the primary stays valid regardless
    second = registry.mint_secret(record)
    assert registry.secrets_for("gw") == [second, first]
    now[0] += 60
    assert registry.secrets_for("gw") == [second, first]  # superseded 60 s ago: still valid
    now[0] += 1
    assert registry.secrets_for("gw") == [second]
    now[0] += 10_000
    assert registry.secrets_for("gw") == [second]  # the newest always stays
    registry.revoke("gw")
    assert registry.secrets_for("gw") == []


@pytest.mark.parametrize(
    ("headers", "content", "status", "error"),
    [
        ({}, b"{}", 401, "identity token not recognised"),
        (bearer("someone-else"), b"{}", 401, "identity token not recognised"),
        ({"Authorization": "Basic abc"}, b"{}", 401, "identity token not recognised"),
        (bearer(IDENTITY_TOKEN), b"{not json", 400, "body is not valid JSON"),
        (bearer(IDENTITY_TOKEN), b"[1]", 400, "body must be a JSON object"),
        (bearer(IDENTITY_TOKEN), b'{"gatewayId": "g"}', 400, "missing field: platform"),
    ],
)
async def test_provision_rejects_bad_requests_with_json_errors(
    plane: HttpServer, headers: dict[str, str], content: bytes, status: int, error: str
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{plane.url}/relay/provision", content=content, headers=headers
        )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": error}


async def test_provision_validates_field_types_and_tenant(
    plane: HttpServer, registry: ControlPlaneRegistry
) -> None:
    registry.add_identity_token("idtok-other", "other-tenant")
    async with httpx.AsyncClient() as client:
        url = f"{plane.url}/relay/provision"
        bad = PROVISION_BODY | {"routeKeys": "guild-1"}
        response = await client.post(url, json=bad, headers=bearer(IDENTITY_TOKEN))
        assert response.json() == {"error": "routeKeys must be a list of strings"}
        bad = PROVISION_BODY | {"wakeUrl": "ftp://x"}
        response = await client.post(url, json=bad, headers=bearer(IDENTITY_TOKEN))
        assert response.json() == {"error": "wakeUrl must be an http(s) URL"}
        await provision(client, plane)
        response = await client.post(url, json=PROVISION_BODY, headers=bearer("idtok-other"))
        assert response.status_code == 403
        assert response.json() == {"error": "gatewayId belongs to another tenant"}


async def test_unknown_route_is_404_and_wrong_method_405(plane: HttpServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{plane.url}/nope")
        assert response.status_code == 404
        assert response.json() == {"error": "no such route: /nope"}
        response = await client.get(f"{plane.url}/relay/provision")
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert "not allowed" in response.json()["error"]


async def test_keep_alive_serves_several_requests_on_one_connection(plane: HttpServer) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            response = await client.get(f"{plane.url}/nope")
            assert response.status_code == 404
    # One raw connection, two pipelined requests, both answered in order.
    stream = await trio.open_tcp_stream("127.0.0.1", plane.port)
    async with stream:
        request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        await stream.send_all(request)
        received = b""
        while received.count(b"HTTP/1.1 404") < 2:
            chunk = await stream.receive_some(4096)
            assert chunk
            received += chunk
    assert received.index(b"/a") < received.index(b"/b")


async def test_garbage_gets_400_and_oversized_body_413(plane: HttpServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", plane.port)
    async with stream:
        await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        reply = await _read_all(stream)
    assert reply.startswith(b"HTTP/1.1 400")
    assert b'"error"' in reply
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{plane.url}/relay/provision",
            content=b"x" * ((1 << 20) + 1),
            headers=bearer(IDENTITY_TOKEN),
        )
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]


async def _read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(4096):
        data += chunk
    return data


async def test_a_raising_app_gets_500_and_the_server_keeps_serving(
    start_app: Callable[[App], Awaitable[HttpServer]],
) -> None:
    async def app(request: HttpRequest) -> HttpResponse:
        if request.path == "/boom":
            raise RuntimeError("bug")
        return HttpResponse(200, b"{}")

    server = await start_app(app)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.url}/boom")
        assert response.status_code == 500
        assert response.json() == {"error": "internal error"}
        assert (await client.get(f"{server.url}/fine")).status_code == 200


# --------------------------------------------------------------------------- policy


async def test_policy_needs_a_valid_upgrade_token_and_stores_the_policy(
    plane: HttpServer, registry: ControlPlaneRegistry
) -> None:
    body = {
        "platform": "discord",
        "requireAddress": True,
        "freeResponseScopes": ["c-support"],
        "allowOtherBots": False,
    }
    async with httpx.AsyncClient() as client:
        secret = (await provision(client, plane))["secret"]
        url = f"{plane.url}/relay/policy"
        response = await client.post(url, json=body, headers=bearer(IDENTITY_TOKEN))
        assert response.status_code == 401
        expired = make_token("gw-test", secret, 1, now=0)
        response = await client.post(url, json=body, headers=bearer(expired))
        assert response.status_code == 401
        assert registry.policy_for("gw-test", "discord") is None
        token = make_upgrade_token("gw-test", secret)
        bad = body | {"requireAddress": "yes"}
        response = await client.post(url, json=bad, headers=bearer(token))
        assert response.json() == {"error": "requireAddress must be a boolean"}
        response = await client.post(url, json=body, headers=bearer(token))
        assert response.status_code == 200
    assert registry.policy_for("gw-test", "discord") == RelevancePolicy(
        require_address=True, free_response_scopes=("c-support",), allow_other_bots=False
    )
    assert registry.policy_for("gw-test", "slack") is None


# --------------------------------------------------------------------------- enroll


async def test_enroll_is_single_use_and_echoes_the_wake_url(
    plane: HttpServer, registry: ControlPlaneRegistry
) -> None:
    token = registry.issue_enrollment_token(TENANT)
    url = f"{plane.url}/relay/enroll"
    body = {"enrollmentToken": token, "gatewayId": "gw-e", "wakeUrl": "https://w.example/"}
    async with httpx.AsyncClient() as client:
        response = await client.post(url, json=body, headers=bearer(IDENTITY_TOKEN))
        assert response.status_code == 200
        reply = response.json()
        assert reply["wakeUrl"] == "https://w.example"
        assert reply["gatewayId"] == "gw-e"
        assert registry.secrets_for("gw-e") == [reply["secret"]]
        assert registry.wake_url_for("gw-e", "any-instance") == "https://w.example"
        again = await client.post(url, json=body, headers=bearer(IDENTITY_TOKEN))
        assert again.status_code == 403
        assert again.json() == {"error": "enrollment token already used"}


async def test_enroll_rejections(plane: HttpServer, registry: ControlPlaneRegistry) -> None:
    registry.add_identity_token("idtok-other", "other-tenant")
    token = registry.issue_enrollment_token(TENANT)
    url = f"{plane.url}/relay/enroll"
    async with httpx.AsyncClient() as client:

        async def post(body: dict[str, Any], identity: str = IDENTITY_TOKEN) -> httpx.Response:
            return await client.post(url, json=body, headers=bearer(identity))

        base = {"enrollmentToken": token, "gatewayId": "gw-e"}
        assert (await post(base, "nobody")).status_code == 401
        wrong_tenant = await post(base, "idtok-other")
        assert wrong_tenant.json() == {"error": "enrollment token belongs to another tenant"}
        unknown = await post(base | {"enrollmentToken": "enr_unknown"})
        assert unknown.json() == {"error": "enrollment token invalid or expired"}
        # A rejected body does not consume the token.
        bad_wake = await post(base | {"wakeUrl": "not a url"})
        assert bad_wake.status_code == 400
        assert "wakeUrl" in bad_wake.json()["error"]
        assert (await post(base)).status_code == 200


async def test_legacy_connector_mode_rejects_wake_url_on_enroll(
    plane: HttpServer, registry: ControlPlaneRegistry
) -> None:
    registry.accept_wake_url_on_enroll = False
    token = registry.issue_enrollment_token(TENANT)
    body = {"enrollmentToken": token, "gatewayId": "gw-e", "wakeUrl": "https://w.example"}
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{plane.url}/relay/enroll", json=body, headers=bearer(IDENTITY_TOKEN)
        )
    assert response.status_code == 400
    assert response.json() == {"error": "unknown field: wakeUrl"}


# --------------------------------------------------------------------------- wake poker


async def test_wake_poker_gets_once_per_cooldown(
    mock_clock: trio.testing.MockClock,
    start_app: Callable[[App], Awaitable[HttpServer]],
) -> None:
    hits: list[tuple[str, str, bytes]] = []

    async def recorder(request: HttpRequest) -> HttpResponse:
        hits.append((request.method, request.path, request.body))
        return HttpResponse(204)

    server = await start_app(recorder)
    async with httpx.AsyncClient() as client:
        poker = WakePoker(client, cooldown_s=60)
        assert await poker.poke("gw/i-1", f"{server.url}/wake") is True
        assert await poker.poke("gw/i-1", f"{server.url}/wake") is False
        assert await poker.poke("gw/i-2", f"{server.url}/wake2") is True
        mock_clock.jump(59.9)
        assert await poker.poke("gw/i-1", f"{server.url}/wake") is False
        mock_clock.jump(0.1)
        assert await poker.poke("gw/i-1", f"{server.url}/wake") is True
    assert hits == [("GET", "/wake", b""), ("GET", "/wake2", b""), ("GET", "/wake", b"")]


async def test_wake_poker_swallows_failures(dead_url: str) -> None:
    async with httpx.AsyncClient() as client:
        poker = WakePoker(client)
        assert await poker.poke("gw", f"{dead_url}/wake") is True


# --------------------------------------------------------------------------- the WS seam


async def test_provisioned_secret_opens_the_reference_connector_socket(
    plane: HttpServer, registry: ControlPlaneRegistry
) -> None:
    """The WebSocket side verifies upgrades with the secrets this registry minted."""
    from trio_websocket import open_websocket_url

    from relay_runtime.connector import open_connector

    async with httpx.AsyncClient() as client:
        secret = (await provision(client, plane))["secret"]
    token = make_upgrade_token("gw-test", secret)
    async with open_connector(registry=registry) as connector:
        headers = [(b"authorization", f"Bearer {token}".encode())]
        with trio.fail_after(10):
            async with open_websocket_url(connector.url, extra_headers=headers) as ws:
                assert not ws.closed
        registry.revoke("gw-test")
        # A raw upgrade request: trio-websocket 0.12.2 leaks the socket of a rejected upgrade.
        upgrade = {
            "Authorization": f"Bearer {token}",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        url = connector.url.replace("ws://", "http://")
        async with httpx.AsyncClient() as client:
            response = await client.get(url, headers=upgrade)
        assert response.status_code == 401


def provision_request(platform: str, bot_id: str) -> HttpRequest:
    body = PROVISION_BODY | {"platform": platform, "botId": bot_id}
    return HttpRequest(
        "POST",
        "/relay/provision",
        (("authorization", f"Bearer {IDENTITY_TOKEN}"),),
        json.dumps(body).encode(),
    )


async def provision_secret(app: ControlPlane, platform: str, bot_id: str = "B1") -> str:
    response = await app(provision_request(platform, bot_id))
    assert response.status == 200, response.body
    secret: str = json.loads(response.body)["secret"]
    return secret


async def test_R78_one_boot_provisioning_several_identities_gets_one_secret() -> None:
    now = [1000.0]
    registry = ControlPlaneRegistry(clock=lambda: now[0])
    registry.add_identity_token(IDENTITY_TOKEN, TENANT)
    app = ControlPlane(registry)
    first = await provision_secret(app, "discord", "D1")
    now[0] += 1
    assert await provision_secret(app, "telegram", "T1") == first
    now[0] += 2 * registry.rotation_window_s
    # The gateway dials with the first response's secret for as long as it runs.
    assert registry.secrets_for("gw-test") == [first]


async def test_a_repeated_identity_is_a_new_boot_and_gets_a_new_secret() -> None:
    now = [1000.0]
    registry = ControlPlaneRegistry(clock=lambda: now[0])
    registry.add_identity_token(IDENTITY_TOKEN, TENANT)
    app = ControlPlane(registry)
    old = await provision_secret(app, "discord")
    now[0] += 1
    new = await provision_secret(app, "discord")  # a restarted instance provisions again
    assert new != old
    assert registry.secrets_for("gw-test") == [new, old]  # overlap for the old instance
    now[0] += registry.rotation_window_s + 1
    assert registry.secrets_for("gw-test") == [new]


async def test_provisioning_after_a_pause_starts_a_new_burst() -> None:
    now = [1000.0]
    registry = ControlPlaneRegistry(clock=lambda: now[0])
    registry.add_identity_token(IDENTITY_TOKEN, TENANT)
    app = ControlPlane(registry)
    old = await provision_secret(app, "discord")
    now[0] += registry.rotation_window_s
    assert await provision_secret(app, "telegram") != old


async def test_R78_gateway_provisioning_two_identities_keeps_a_valid_secret(
    plane: HttpServer, registry: ControlPlaneRegistry, tmp_path: Path
) -> None:
    now = [1000.0]
    registry.clock = lambda: now[0]
    config = GatewayConfig(
        relay_url=plane.url,
        platforms=("discord", "telegram"),
        bot_ids={"discord": {"botId": "D1"}, "telegram": {"botId": "T1"}},
        state_dir=tmp_path / "state",
    )
    async with httpx.AsyncClient() as client:
        result = await gateway_provision(config, IDENTITY_TOKEN, client, gateway_id="gw-two")
    assert result.credentials is not None
    assert len(result.succeeded) == 2
    now[0] += 16 * 60  # past the rotation window: a redial must still authenticate
    token = make_upgrade_token("gw-two", result.credentials.secret, now=now[0])
    assert verify_token(token, registry.secrets_for("gw-two"), now=now[0]) == "gw-two"


# --------------------------------------------------------------------------- hardening (issue 12)


async def test_policy_refuses_upgrade_tokens_that_never_expire_or_live_too_long(
    plane: HttpServer, registry: ControlPlaneRegistry
) -> None:
    body = {
        "platform": "discord",
        "requireAddress": True,
        "freeResponseScopes": [],
        "allowOtherBots": False,
    }
    async with httpx.AsyncClient() as client:
        secret = (await provision(client, plane))["secret"]
        url = f"{plane.url}/relay/policy"
        for token in (make_token("gw-test", secret, 0), make_token("gw-test", secret, 10**9)):
            response = await client.post(url, json=body, headers=bearer(token))
            assert response.status_code == 401
        assert registry.policy_for("gw-test", "discord") is None
        registry.max_token_lifetime_s = None  # the legacy switch
        response = await client.post(url, json=body, headers=bearer(make_token("gw-test", secret)))
        assert response.status_code == 200


class _NoLookups(dict[str, str]):
    """A table that can be iterated but not indexed: a lookup by secret fails the test."""

    def __getitem__(self, key: object) -> str:
        raise AssertionError("looked up by secret")

    def get(self, key: object, default: object = None) -> str:  # type: ignore[override]
        raise AssertionError("looked up by secret")

    def __contains__(self, key: object) -> bool:
        raise AssertionError("looked up by secret")


def test_identity_tokens_are_compared_in_constant_time_against_every_known_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import secrets

    from relay_runtime.connector import _control_plane as control_plane

    registry = ControlPlaneRegistry()
    registry.identity_tokens = _NoLookups(
        {"tok-a-0123456789": "a", "tok-b-0123456789": "b", "tok-c-0123456789": "c"}
    )
    calls: list[tuple[bytes, bytes]] = []
    real = secrets.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(control_plane.secrets, "compare_digest", spy)
    assert registry.tenant_for("tok-a-0123456789") == "a"
    assert len(calls) == 3  # no early exit at the first (matching) key
    assert registry.tenant_for("tok-a-0123456780") is None
    assert registry.tenant_for("") is None
    token = registry.issue_enrollment_token("a")
    calls.clear()
    assert registry.consume_enrollment_token(token, "a") is None
    assert calls, "the enrollment token was not compared with compare_digest"


async def test_json_nested_100k_levels_is_a_400_not_a_500(
    plane: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient() as client:
        for route in ("provision", "enroll", "policy"):
            token = IDENTITY_TOKEN if route != "policy" else "x"
            response = await client.post(
                f"{plane.url}/relay/{route}",
                content=b"[" * 100_000 + b"]" * 100_000,
                headers=bearer(token),
            )
            if route == "policy":  # the bearer is checked first
                assert response.status_code == 401
                continue
            assert response.status_code == 400, response.text
            assert response.json() == {"error": "body is nested too deeply"}
    assert "RecursionError" not in caplog.text
    assert "handler failed" not in caplog.text


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_2_mib_body_gets_a_413_the_client_can_read(
    plane: HttpServer, chunked: bool
) -> None:
    body = b"x" * (2 << 20)

    async def stream_body() -> Any:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    for _ in range(5):  # a reset before the client reads the 413 is timing-dependent
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{plane.url}/relay/provision",
                content=stream_body() if chunked else body,
                headers=bearer(IDENTITY_TOKEN),
            )
        assert response.status_code == 413
        assert response.json() == {"error": f"body larger than {1 << 20} bytes"}
        assert response.headers["connection"] == "close"


async def test_a_client_that_sends_2_mib_before_reading_still_reads_the_413(
    plane: HttpServer,
) -> None:
    # A plain client writes its whole request, then reads. Closing with its upload unread
    # made the kernel reset the connection (the write failed, the 413 was lost); the server
    # now reads and discards the rest, half-closes, and the client reads the answer.
    body = b"x" * (2 << 20)
    head = (
        f"POST /relay/provision HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {IDENTITY_TOKEN}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    for _ in range(5):
        stream = await trio.open_tcp_stream("127.0.0.1", plane.port)
        async with stream:
            await stream.send_all(head + body)
            reply = await _read_all(stream)
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:80]
        assert reply.endswith(b'{"error":"body larger than 1048576 bytes"}')
