"""Fixtures for the control-plane tests: the reference HTTP plane on real loopback."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from relay_runtime.config import GatewayConfig
from relay_runtime.connector._control_plane import (
    ControlPlaneRegistry,
    HttpRequest,
    HttpResponse,
    HttpServer,
    serve_control_plane,
    serve_http,
)

IDENTITY_TOKEN = "idtok-acme-0123456789"
TENANT = "acme"

App = Callable[[HttpRequest], Awaitable[HttpResponse]]


@pytest.fixture
def registry() -> ControlPlaneRegistry:
    registry = ControlPlaneRegistry()
    registry.add_identity_token(IDENTITY_TOKEN, TENANT)
    return registry


@pytest.fixture
async def plane(nursery: trio.Nursery, registry: ControlPlaneRegistry) -> HttpServer:
    server: HttpServer = await nursery.start(serve_control_plane, registry)
    return server


@pytest.fixture
def start_app(nursery: trio.Nursery) -> Callable[[App], Awaitable[HttpServer]]:
    """Start an arbitrary app (a misbehaving connector) on loopback."""

    async def start(app: App) -> HttpServer:
        server: HttpServer = await nursery.start(serve_http, app)
        return server

    return start


@pytest.fixture
def dead_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., GatewayConfig]:
    def make(url: str | None, **fields: object) -> GatewayConfig:
        fields.setdefault("state_dir", tmp_path / "state")
        return GatewayConfig(relay_url=url, **fields)  # type: ignore[arg-type]

    return make
