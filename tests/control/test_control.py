"""The control-plane client (RC §9, R77-R84) against the real loopback HTTP plane."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from protocol import Identity, make_upgrade_token, verify_token
from relay_runtime._control import (
    ENROLL_401,
    ENROLL_403,
    ENROLL_NO_SECRET,
    UNCONFIRMED_WAKE_WARNING,
    ControlError,
    Credentials,
    EnrollResult,
    boot_control_plane,
    declare_policy,
    default_gateway_id,
    enroll,
    open_client,
    persist_enrollment,
    policy_for,
    project_policy,
    provision,
    resolve_identity_token,
    send_policy,
)
from relay_runtime.config import GatewayConfig
from relay_runtime.connector._control_plane import (
    ControlPlaneRegistry,
    HttpRequest,
    HttpResponse,
    HttpServer,
    json_response,
)

from .conftest import IDENTITY_TOKEN, TENANT

App = Callable[[HttpRequest], Awaitable[HttpResponse]]
StartApp = Callable[[App], Awaitable[HttpServer]]
MakeConfig = Callable[..., GatewayConfig]


def recording(status: int, payload: object, seen: list[HttpRequest]) -> App:
    async def app(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        if isinstance(payload, bytes):
            return HttpResponse(status, payload)
        return json_response(status, payload)

    return app


def assert_no_secret_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """R39: nothing secret in any log record (message, args, or formatted)."""
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        for secret in secrets:
            assert secret not in text, record.getMessage()


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------- R77


async def test_R77_pinned_credentials_skip_provision(
    plane: HttpServer, registry: ControlPlaneRegistry, make_config: MakeConfig
) -> None:
    secret = "p" * 40
    config = make_config(
        plane.url, gateway_id="gw-pin", secret=secret, identity_token=IDENTITY_TOKEN
    )
    creds = await boot_control_plane(config)
    assert creds == Credentials(gateway_id="gw-pin", secret=secret)
    assert registry.received == []


async def test_R77_no_url_or_no_identity_token_skips_provision(
    plane: HttpServer, registry: ControlPlaneRegistry, make_config: MakeConfig
) -> None:
    assert await boot_control_plane(make_config(None, identity_token=IDENTITY_TOKEN)) is None
    assert await boot_control_plane(make_config(plane.url)) is None
    vetoed = make_config(plane.url, identity_token=IDENTITY_TOKEN, enabled=False)
    assert await boot_control_plane(vetoed) is None
    assert registry.received == []


async def test_R77_provision_runs_with_url_and_identity_token(
    plane: HttpServer, registry: ControlPlaneRegistry, make_config: MakeConfig, tmp_path: Path
) -> None:
    config = make_config(plane.url, identity_token=IDENTITY_TOKEN, gateway_id="gw-boot")
    creds = await boot_control_plane(config)
    assert creds is not None
    assert creds.gateway_id == "gw-boot"
    assert creds.tenant == TENANT
    token = make_upgrade_token("gw-boot", creds.secret)
    assert verify_token(token, registry.secrets_for("gw-boot")) == "gw-boot"
    assert repr(creds).count("<hidden>") == 2


# --------------------------------------------------------------------------- R78


async def test_R78_body_once_per_identity_with_one_gateway_id(
    plane: HttpServer, registry: ControlPlaneRegistry, make_config: MakeConfig
) -> None:
    config = make_config(
        plane.url,
        platforms=("discord", "telegram"),
        bot_ids={"discord": {"botId": "D1"}, "telegram": {"botId": "T1"}},
        route_keys=("g1",),
    )
    async with open_client() as client:
        result = await provision(config, IDENTITY_TOKEN, client, gateway_id="gw-multi")
    bodies = [body for route, body in registry.received if route == "provision"]
    assert bodies == [
        {
            "gatewayId": "gw-multi",
            "platform": "discord",
            "botId": "D1",
            "gatewayEndpoint": "",
            "routeKeys": ["g1"],
        },
        {
            "gatewayId": "gw-multi",
            "platform": "telegram",
            "botId": "T1",
            "gatewayEndpoint": "",
            "routeKeys": ["g1"],
        },
    ]
    assert result.succeeded == (Identity("discord", "D1"), Identity("telegram", "T1"))
    assert result.errors == ()
    assert result.credentials is not None
    # The credentials are the first response's.
    assert result.credentials.secret == registry.secrets_for("gw-multi")[-1]
    assert result.wake_confirmed is False


async def test_R78_instance_id_and_wake_url_only_when_set(
    start_app: StartApp, make_config: MakeConfig
) -> None:
    seen: list[HttpRequest] = []
    server = await start_app(recording(200, {"secret": "s" * 40}, seen))
    config = make_config(
        server.url,
        instance_id="inst-7",
        wake_url="https://wake.example/x/",
        endpoint="https://legacy.example/in",
    )
    async with open_client() as client:
        result = await provision(config, IDENTITY_TOKEN, client, gateway_id="gw")
    body = json.loads(seen[0].body)
    assert list(body) == [
        "gatewayId",
        "platform",
        "botId",
        "gatewayEndpoint",
        "routeKeys",
        "instanceId",
        "wakeUrl",
    ]
    assert body["instanceId"] == "inst-7"
    assert body["wakeUrl"] == "https://wake.example/x"
    assert body["gatewayEndpoint"] == "https://legacy.example/in"
    assert result.wake_confirmed is True
    assert result.credentials is not None and result.credentials.wake_confirmed
    # Wire form: compact JSON, JSON headers, bearer.
    assert b", " not in seen[0].body
    assert seen[0].header("content-type") == "application/json"
    assert seen[0].header("accept") == "application/json"
    assert seen[0].bearer() == IDENTITY_TOKEN


def test_default_gateway_id() -> None:
    assert default_gateway_id("box") == "gw-box"
    assert default_gateway_id("") == "gw-hermes"
    assert default_gateway_id().startswith("gw-")


# --------------------------------------------------------------------------- R79


@pytest.mark.parametrize(
    ("status", "payload", "message"),
    [
        (500, {"error": "db down"}, "connector returned HTTP 500: db down"),
        (503, b"<html>busy</html>", "connector returned HTTP 503"),
        (401, {"error": 7}, "connector returned HTTP 401"),
        (200, b"{not json", "connector returned an unexpected response (no secret)"),
        (200, [1, 2], "connector returned an unexpected response (no secret)"),
        (200, {"secret": ""}, "connector returned an unexpected response (no secret)"),
        (201, {"tenant": "t"}, "connector returned an unexpected response (no secret)"),
        (302, {}, "connector returned HTTP 302"),
    ],
)
async def test_R79_provision_errors_map_to_the_messages(
    start_app: StartApp,
    make_config: MakeConfig,
    caplog: pytest.LogCaptureFixture,
    status: int,
    payload: object,
    message: str,
) -> None:
    server = await start_app(recording(status, payload, []))
    config = make_config(server.url)
    with caplog.at_level(logging.WARNING, logger="relay_runtime.control"):
        async with open_client() as client:
            result = await provision(config, IDENTITY_TOKEN, client)
    assert result.credentials is None
    assert result.errors == ((Identity("relay", ""), message),)
    assert message in caplog.text


async def test_R79_connector_down_is_could_not_reach(
    dead_url: str, make_config: MakeConfig, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(dead_url, identity_token=IDENTITY_TOKEN)
    with caplog.at_level(logging.WARNING, logger="relay_runtime.control"):
        assert await boot_control_plane(config) is None
    assert "could not reach connector: " in caplog.text
    assert "dialing unauthenticated" in caplog.text
    assert_no_secret_logged(caplog, IDENTITY_TOKEN)


async def test_R79_real_plane_401_message(plane: HttpServer, make_config: MakeConfig) -> None:
    async with open_client() as client:
        result = await provision(make_config(plane.url), "wrong-token", client)
    assert result.errors[0][1] == "connector returned HTTP 401: identity token not recognised"


async def test_R79_secret_issued_false_is_no_error(
    start_app: StartApp, make_config: MakeConfig
) -> None:
    server = await start_app(recording(200, {"secretIssued": False, "gatewayId": "g"}, []))
    config = make_config(server.url, identity_token=IDENTITY_TOKEN)
    async with open_client() as client:
        result = await provision(config, IDENTITY_TOKEN, client)
    assert result.errors == ()
    assert result.succeeded == (Identity("relay", ""),)
    assert result.credentials is None
    assert await boot_control_plane(config) is None


async def test_R79_a_failed_identity_does_not_stop_the_others(
    start_app: StartApp, make_config: MakeConfig, tmp_path: Path
) -> None:
    async def app(request: HttpRequest) -> HttpResponse:
        body = json.loads(request.body)
        if body["platform"] == "discord":
            return json_response(502, {"error": "discord route broken"})
        return json_response(200, {"secret": f"secret-for-{body['platform']}" + "x" * 30})

    server = await start_app(app)
    config = make_config(
        server.url, platforms=("discord", "telegram", "slack"), identity_token=IDENTITY_TOKEN
    )
    async with open_client() as client:
        result = await provision(config, IDENTITY_TOKEN, client)
    assert result.errors == (
        (Identity("discord", ""), "connector returned HTTP 502: discord route broken"),
    )
    assert result.succeeded == (Identity("telegram", ""), Identity("slack", ""))
    assert result.credentials is not None
    assert result.credentials.secret.startswith("secret-for-telegram")
    creds = await boot_control_plane(config)
    assert creds is not None
    # Credentials never touch disk: nothing was written anywhere under tmp_path.
    assert await trio.to_thread.run_sync(files_under, tmp_path) == []


# --------------------------------------------------------------------------- R80


def test_R80_projection_fixture_from_the_contract() -> None:
    settings = {
        "discord": {"require_mention": True, "free_response_channels": ["c-support", "c-help"]}
    }
    assert project_policy("discord", settings, {}) == {
        "platform": "discord",
        "requireAddress": True,
        "freeResponseScopes": ["c-support", "c-help"],
        "allowOtherBots": False,
    }


def test_R80_comma_string_scopes() -> None:
    settings = {"discord": {"free_response_channels": "c1, c2 ,c3"}}
    policy = project_policy("discord", settings, {})
    assert policy is not None
    assert policy["freeResponseScopes"] == ["c1", "c2", "c3"]
    assert policy["requireAddress"] is False


def test_R80_allow_bots_env() -> None:
    assert project_policy("discord", {}, {"DISCORD_ALLOW_BOTS": "all"}) == {
        "platform": "discord",
        "requireAddress": False,
        "freeResponseScopes": [],
        "allowOtherBots": True,
    }
    policy = project_policy("discord", {}, {"DISCORD_ALLOW_BOTS": " Mentions "})
    assert policy is not None and policy["allowOtherBots"] is True


def test_R80_nothing_for_all_default_or_relay() -> None:
    assert project_policy("discord", {}, {}) is None
    assert project_policy("discord", {"discord": {"require_mention": False}}, {}) is None
    assert project_policy("relay", {"require_mention": True}, {"RELAY_ALLOW_BOTS": "all"}) is None
    assert project_policy("", {"require_mention": True}, {}) is None


def test_R80_block_lookup_order_and_top_level_fallback() -> None:
    nested = {"gateway": {"platforms": {"slack": {"require_mention": True}}}}
    assert project_policy("slack", nested, {}) == {
        "platform": "slack",
        "requireAddress": True,
        "freeResponseScopes": [],
        "allowOtherBots": False,
    }
    flat = {"platforms": {"slack": {"free_response_channels": ["a"]}}}
    policy = project_policy("slack", flat, {})
    assert policy is not None and policy["freeResponseScopes"] == ["a"]
    # A block key wins even when falsy; top level applies only without it.
    both = {"require_mention": True, "slack": {"require_mention": False}}
    assert project_policy("slack", both, {}) is None
    top = {"require_mention": True, "free_response_channels": " x ,, y"}
    policy = project_policy("slack", top, {})
    assert policy is not None
    assert (policy["requireAddress"], policy["freeResponseScopes"]) == (True, ["x", "y"])


def test_R80_malformed_inputs_degrade_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    settings = {"discord": {"require_mention": "perhaps", "free_response_channels": 42}}
    with caplog.at_level(logging.WARNING, logger="relay_runtime.control"):
        assert project_policy("discord", settings, {"DISCORD_ALLOW_BOTS": "sometimes"}) is None
    assert "discord.require_mention" in caplog.text
    assert "discord.free_response_channels" in caplog.text
    assert "DISCORD_ALLOW_BOTS" in caplog.text


def test_R80_projection_from_a_loaded_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("discord:\n  free_response_channels: 'c1, c2 ,c3'\n", encoding="utf-8")
    env = {"GATEWAY_RELAY_PLATFORM": "discord", "DISCORD_ALLOW_BOTS": "all"}
    env |= {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    config = GatewayConfig.load(environ=env, config_path=path)

    assert policy_for(config, "discord") == {
        "platform": "discord",
        "requireAddress": False,
        "freeResponseScopes": ["c1", "c2", "c3"],
        "allowOtherBots": True,
    }


# --------------------------------------------------------------------------- R81


async def test_R81_policy_sent_with_a_fresh_hmac_bearer_and_stored(
    plane: HttpServer, registry: ControlPlaneRegistry, make_config: MakeConfig
) -> None:
    config = make_config(
        plane.url,
        identity_token=IDENTITY_TOKEN,
        platform_settings={"discord": {"require_mention": True}},
        platform="discord",
        gateway_id="gw-pol",
    )
    async with open_client() as client:
        result = await provision(config, IDENTITY_TOKEN, client)
    assert result.credentials is not None
    sent = await declare_policy(config, result.credentials)
    assert sent == {"discord": True}
    policy = registry.policy_for("gw-pol", "discord")
    assert policy is not None and policy.require_address is True


async def test_R81_each_call_mints_a_new_upgrade_token(make_config: MakeConfig) -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"ok": True})

    creds = Credentials(gateway_id="gw-h", secret="h" * 40)
    config = make_config("https://c.example")
    policy = {"platform": "discord", "requireAddress": True}
    times = iter([1_750_000_000.0, 1_750_000_001.0])
    async with open_client(httpx.MockTransport(handler)) as client:
        for _ in range(2):
            ok = await send_policy(config, creds, policy, client, wall_clock=lambda: next(times))
            assert ok is True
    assert len(set(seen)) == 2
    for header, now in zip(seen, [1_750_000_000, 1_750_000_001], strict=True):
        assert header is not None and header.startswith("Bearer ")
        token = header.removeprefix("Bearer ")
        assert verify_token(token, [creds.secret], now=now + 300) == "gw-h"
        assert verify_token(token, [creds.secret], now=now + 301) is None


@pytest.mark.parametrize("status", [201, 204, 400, 401, 500])
async def test_R81_policy_succeeds_only_on_200(
    start_app: StartApp,
    make_config: MakeConfig,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    server = await start_app(recording(status, {"error": "nope"}, []))
    config = make_config(server.url)
    creds = Credentials(gateway_id="gw", secret="s" * 40)
    with caplog.at_level(logging.WARNING, logger="relay_runtime.control"):
        async with open_client() as client:
            ok = await send_policy(config, creds, {"platform": "discord"}, client)
    assert ok is False
    assert f"HTTP {status}" in caplog.text
    assert_no_secret_logged(caplog, "s" * 40)


async def test_R81_policy_never_raises(dead_url: str, make_config: MakeConfig) -> None:
    config = make_config(dead_url, platform_settings={"x": {"require_mention": True}}, platform="x")
    creds = Credentials(gateway_id="gw", secret="s" * 40)
    assert await declare_policy(config, creds) == {"x": False}
    assert await declare_policy(config, None) == {}
    assert await declare_policy(make_config(None, platform="x"), creds) == {}


# --------------------------------------------------------------------------- R82


async def run_enroll(url: str, wake_url: str | None, token: str) -> EnrollResult:
    async with open_client() as client:
        return await enroll(
            connector_url=url,
            enrollment_token=token,
            identity_token=IDENTITY_TOKEN,
            gateway_id="gw-enr",
            wake_url=wake_url,
            client=client,
        )


async def test_R82_enroll_forwards_the_wake_url_and_confirms_on_echo(
    plane: HttpServer, registry: ControlPlaneRegistry
) -> None:
    token = registry.issue_enrollment_token(TENANT)
    result = await run_enroll(plane.url + "/relay", "https://wake.example/g", token)
    assert result.wake_confirmed is True
    assert result.credentials.wake_confirmed is True
    assert registry.received[-1] == (
        "enroll",
        {"enrollmentToken": token, "gatewayId": "gw-enr", "wakeUrl": "https://wake.example/g"},
    )
    assert registry.wake_url_for("gw-enr") == "https://wake.example/g"
    assert registry.secrets_for("gw-enr") == [result.credentials.secret]


async def test_R82_no_wake_url_no_key(plane: HttpServer, registry: ControlPlaneRegistry) -> None:
    token = registry.issue_enrollment_token(TENANT)
    result = await run_enroll(plane.url, None, token)
    assert result.wake_confirmed is False
    assert registry.received[-1] == ("enroll", {"enrollmentToken": token, "gatewayId": "gw-enr"})


@pytest.mark.parametrize("echo", [None, "https://wake.example/other", "https://wake.example/g/"])
async def test_R82_not_confirmed_without_an_exact_echo(
    start_app: StartApp, caplog: pytest.LogCaptureFixture, echo: str | None
) -> None:
    reply: dict[str, object] = {"secret": "s" * 40, "gatewayId": "gw-enr"}
    if echo is not None:
        reply["wakeUrl"] = echo
    server = await start_app(recording(200, reply, []))
    with caplog.at_level(logging.WARNING, logger="relay_runtime.control"):
        result = await run_enroll(server.url, "https://wake.example/g", "tok")
    assert result.wake_confirmed is False
    assert UNCONFIRMED_WAKE_WARNING in caplog.text


async def test_R82_400_mentioning_wake_url_is_retried_once_without_it(
    plane: HttpServer, registry: ControlPlaneRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.accept_wake_url_on_enroll = False
    token = registry.issue_enrollment_token(TENANT)
    with caplog.at_level(logging.DEBUG):
        result = await run_enroll(plane.url, "https://wake.example/g", token)
    assert result.wake_confirmed is False
    creds = result.credentials
    assert creds.delivery_key is not None
    assert_no_secret_logged(caplog, token, IDENTITY_TOKEN, creds.secret, creds.delivery_key)
    assert [body for _, body in registry.received] == [
        {"enrollmentToken": token, "gatewayId": "gw-enr", "wakeUrl": "https://wake.example/g"},
        {"enrollmentToken": token, "gatewayId": "gw-enr"},
    ]
    assert UNCONFIRMED_WAKE_WARNING in caplog.text


async def test_R82_other_400_is_not_retried(start_app: StartApp) -> None:
    seen: list[HttpRequest] = []
    server = await start_app(recording(400, {"error": "gatewayId too long"}, seen))
    with pytest.raises(ControlError, match=r"^Connector returned HTTP 400: gatewayId too long$"):
        await run_enroll(server.url, "https://wake.example/g", "tok")
    assert len(seen) == 1


# --------------------------------------------------------------------------- R83


@pytest.mark.parametrize(
    ("status", "payload", "message"),
    [
        (401, {"error": "whatever"}, ENROLL_401),
        (403, {"error": "enrollment token already used"}, "enrollment token already used"),
        (403, b"", ENROLL_403),
        (500, {"error": "boom"}, "Connector returned HTTP 500: boom"),
        (502, b"bad gateway", "Connector returned HTTP 502"),
        (302, {}, "Connector returned HTTP 302"),
        (200, {"gatewayId": "g"}, ENROLL_NO_SECRET),
        (200, b"{nope", ENROLL_NO_SECRET),
    ],
)
async def test_R83_enroll_errors_map_to_the_messages(
    start_app: StartApp, status: int, payload: object, message: str
) -> None:
    server = await start_app(recording(status, payload, []))
    with pytest.raises(ControlError) as info:
        await run_enroll(server.url, None, "tok")
    assert str(info.value) == message


async def test_R83_enroll_transport_error(dead_url: str) -> None:
    with pytest.raises(ControlError) as info:
        await run_enroll(f"{dead_url.replace('http', 'ws')}/relay/", None, "tok")
    assert str(info.value).startswith(f"Could not reach the connector at {dead_url}: ")


async def test_R83_real_plane_403_carries_the_body_error(
    plane: HttpServer, registry: ControlPlaneRegistry
) -> None:
    with pytest.raises(ControlError, match=r"^enrollment token invalid or expired$"):
        await run_enroll(plane.url, None, "enr_forged")


# --------------------------------------------------------------------------- R84


async def test_R84_calls_time_out_at_15_seconds(
    autojump_clock: trio.testing.MockClock, make_config: MakeConfig
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await trio.sleep(3600)
        return httpx.Response(200, json={"secret": "late"})

    config = make_config("https://c.example")
    async with open_client(httpx.MockTransport(slow)) as client:
        start = trio.current_time()
        result = await provision(config, IDENTITY_TOKEN, client)
        assert trio.current_time() - start == 15.0
        assert result.errors[0][1] == "could not reach connector: timed out after 15 s"

        start = trio.current_time()
        creds = Credentials(gateway_id="gw", secret="s" * 40)
        assert await send_policy(config, creds, {"platform": "d"}, client) is False
        assert trio.current_time() - start == 15.0

        start = trio.current_time()
        with pytest.raises(ControlError, match="timed out after 15 s"):
            await enroll(
                connector_url="https://c.example",
                enrollment_token="t",
                identity_token="i",
                gateway_id="g",
                wake_url=None,
                client=client,
            )
        assert trio.current_time() - start == 15.0


async def test_R84_configured_http_timeout_applies(
    autojump_clock: trio.testing.MockClock, make_config: MakeConfig
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await trio.sleep(10)
        return httpx.Response(200, json={"secret": "s" * 40})

    async with open_client(httpx.MockTransport(slow)) as client:
        ok = await provision(make_config("https://c.example", http_timeout_s=11), "t", client)
        assert ok.credentials is not None
        late = await provision(make_config("https://c.example", http_timeout_s=9), "t", client)
        assert late.errors[0][1] == "could not reach connector: timed out after 9 s"


def test_R84_httpx_has_no_timeout_of_its_own() -> None:
    # httpx's default 5 s read timeout would beat a configured http_timeout_s above 5 s.
    client = open_client()
    assert client.timeout == httpx.Timeout(None)


async def test_R84_our_timeout_governs_a_real_silent_server(
    start_app: StartApp, make_config: MakeConfig
) -> None:
    async def silent(request: HttpRequest) -> HttpResponse:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    server = await start_app(silent)
    config = make_config(server.url, http_timeout_s=0.3)
    async with open_client() as client:
        start = trio.current_time()
        result = await provision(config, IDENTITY_TOKEN, client)
        elapsed = trio.current_time() - start
    assert result.errors[0][1] == "could not reach connector: timed out after 0.3 s"
    assert 0.3 <= elapsed < 2.0


async def test_R84_redirects_are_not_followed(
    start_app: StartApp, plane: HttpServer, registry: ControlPlaneRegistry, make_config: MakeConfig
) -> None:
    seen: list[HttpRequest] = []

    async def redirector(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        location = f"{plane.url}{request.path}"
        return HttpResponse(302, b"", None, (("location", location),))

    server = await start_app(redirector)
    config = make_config(server.url, identity_token=IDENTITY_TOKEN)
    assert await boot_control_plane(config) is None
    with pytest.raises(ControlError, match=r"^Connector returned HTTP 302$"):
        await run_enroll(server.url, None, registry.issue_enrollment_token(TENANT))
    assert len(seen) == 2
    assert registry.received == []  # the bearer never reached the redirect target


# --------------------------------------------------------------------------- identity token


async def test_identity_token_from_oidc_client_credentials(
    start_app: StartApp,
    plane: HttpServer,
    registry: ControlPlaneRegistry,
    make_config: MakeConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[HttpRequest] = []

    async def idp(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return json_response(200, {"access_token": IDENTITY_TOKEN, "token_type": "Bearer"})

    server = await start_app(idp)
    config = make_config(
        plane.url,
        idp_token_url=f"{server.url}/token",
        idp_client_id="cid",
        idp_client_secret="csecret-123",
        idp_scope="relay",
        identity_token="stale-static-token",
        gateway_id="gw-idp",
    )
    with caplog.at_level(logging.DEBUG):
        creds = await boot_control_plane(config)
    assert creds is not None and creds.gateway_id == "gw-idp"
    form = dict(pair.split("=") for pair in seen[0].body.decode().split("&"))
    assert form == {
        "grant_type": "client_credentials",
        "client_id": "cid",
        "client_secret": "csecret-123",
        "scope": "relay",
    }
    assert_no_secret_logged(caplog, "csecret-123", IDENTITY_TOKEN, creds.secret)


async def test_identity_provider_failure_falls_back_to_the_static_token(
    start_app: StartApp, make_config: MakeConfig, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_app(recording(401, {"error": "invalid_client"}, []))
    config = make_config(
        "https://c.example",
        idp_token_url=f"{server.url}/token",
        idp_client_id="cid",
        idp_client_secret="csecret",
        identity_token="static",
    )
    with caplog.at_level(logging.WARNING, logger="relay_runtime.control"):
        async with open_client() as client:
            assert await resolve_identity_token(config, client) == "static"
    assert "identity provider returned HTTP 401: invalid_client" in caplog.text


# --------------------------------------------------------------------------- persistence


def test_persist_enrollment_writes_0600_idempotently(tmp_path: Path) -> None:
    state = tmp_path / "state"
    creds = Credentials(gateway_id="gw-1", secret="S" * 40, delivery_key="dk-1")
    result = EnrollResult(credentials=creds, wake_url="https://w.example/", wake_confirmed=True)
    shown = persist_enrollment(state, result, connector_url="https://c.example/")
    path = state / "relay.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text(encoding="utf-8")
    assert first == (
        "GATEWAY_RELAY_ID=gw-1\n"
        f"GATEWAY_RELAY_SECRET={'S' * 40}\n"
        "GATEWAY_RELAY_DELIVERY_KEY=dk-1\n"
        "GATEWAY_RELAY_URL=https://c.example\n"
        "GATEWAY_RELAY_WAKE_URL=https://w.example\n"
        "GATEWAY_RELAY_WAKE_CONFIRMED=1\n"
    )
    assert shown == [
        ("GATEWAY_RELAY_ID", "gw-1"),
        ("GATEWAY_RELAY_SECRET", "<hidden>"),
        ("GATEWAY_RELAY_DELIVERY_KEY", "<hidden>"),
        ("GATEWAY_RELAY_URL", "https://c.example"),
        ("GATEWAY_RELAY_WAKE_URL", "https://w.example"),
        ("GATEWAY_RELAY_WAKE_CONFIRMED", "1"),
    ]
    persist_enrollment(state, result, connector_url="https://c.example/")
    assert path.read_text(encoding="utf-8") == first


def test_persist_enrollment_keeps_other_lines_and_drops_a_stale_confirmation(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / "relay.env"
    path.write_text(
        "# mine\nGATEWAY_RELAY_INSTANCE_ID=i-1\nGATEWAY_RELAY_SECRET=old\n"
        "GATEWAY_RELAY_WAKE_CONFIRMED=1\n",
        encoding="utf-8",
    )
    path.chmod(0o644)
    creds = Credentials(gateway_id="gw-2", secret="N" * 40)
    persist_enrollment(state, EnrollResult(credentials=creds, wake_url=None, wake_confirmed=False))
    assert path.read_text(encoding="utf-8") == (
        f"# mine\nGATEWAY_RELAY_INSTANCE_ID=i-1\nGATEWAY_RELAY_SECRET={'N' * 40}\n"
        "GATEWAY_RELAY_ID=gw-2\n"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The loader reads it back.
    config = GatewayConfig.from_env({"RELAY_STATE_DIR": str(state)})
    assert (config.gateway_id, config.secret) == ("gw-2", "N" * 40)
    assert config.instance_id == "i-1"


def test_persist_refuses_values_that_would_break_the_file(tmp_path: Path) -> None:
    creds = Credentials(gateway_id="gw", secret="a\nGATEWAY_RELAY_URL=evil")
    with pytest.raises(ControlError, match="GATEWAY_RELAY_SECRET"):
        persist_enrollment(
            tmp_path, EnrollResult(credentials=creds, wake_url=None, wake_confirmed=False)
        )
    assert not (tmp_path / "relay.env").exists()


def test_persist_enrollment_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "attacker-readable"
    target.write_text("", encoding="utf-8")
    # The old fixed temp name, and the file itself, both planted as symlinks.
    (state / ".relay.env.tmp").symlink_to(target)
    (state / "relay.env").symlink_to(tmp_path / "also-attacker")
    creds = Credentials(gateway_id="gw-3", secret="Z" * 40)
    persist_enrollment(state, EnrollResult(credentials=creds, wake_url=None, wake_confirmed=False))
    assert target.read_text(encoding="utf-8") == ""
    assert not (tmp_path / "also-attacker").exists()
    path = state / "relay.env"
    assert not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"GATEWAY_RELAY_SECRET={'Z' * 40}" in path.read_text(encoding="utf-8")
    assert [p.name for p in state.iterdir() if p.name.startswith(".relay.env")] == [
        ".relay.env.tmp"
    ]
