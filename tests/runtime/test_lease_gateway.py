"""The gateway with its state in PostgreSQL: it dials only while it holds its gateway id's
lease, stops serving when the lease is lost, and releases it when it stops.

A real gateway (``run_gateway``) against the reference connector over memory streams and
the real PostgreSQL server; the other process is played by the lease's own statements.
Real clock (the lease's expiry is the server's), ``lease_ttl_s=6`` so a loss shows within
1.5 s (the next renewal) and load cannot make the gateway lose it by itself; every wait is
for an event, with a generous ``fail_after`` as a guard.
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any

import pytest
import trio

from relay_runtime import Gateway, run_gateway
from relay_runtime._state import LeaseLost
from relay_runtime._state._lease import LeaseSql
from relay_runtime.config import GatewayConfig
from relay_runtime.connector import ReferenceConnector
from relay_runtime.testing import MEMORY_RELAY_URL
from tests.pg import require_pg
from tests.runtime.state_steps import drop_pg_gateways, pg_gateway_id
from tests.runtime.test_lease import expire_now, seen

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from relay_runtime._transport import Dialer

pytestmark = pytest.mark.postgres

GUARD_S = 60


@pytest.fixture
def gateway_id(tmp_path: Path) -> Iterator[str]:
    require_pg()
    yield pg_gateway_id(tmp_path)
    drop_pg_gateways()


async def quiet_agent(turn: Any) -> str | None:
    return None


class Scene:
    """A connector, a counting dialer and the gateway's configuration."""

    def __init__(self, gateway_id: str, tmp_path: Path, nursery: trio.Nursery) -> None:
        secret = secrets.token_urlsafe(32)
        self.connector = ReferenceConnector(
            secrets={gateway_id: secret}, always_buffer=True, close_timeout=1.0
        )
        self.dials = 0
        inner = self.connector.memory_dialer(nursery)

        async def dial(nursery: trio.Nursery, url: str, **options: Any) -> Any:
            self.dials += 1
            return await inner(nursery, url, **options)

        self.dialer: Dialer = dial
        self.config = GatewayConfig(
            relay_url=MEMORY_RELAY_URL,
            gateway_id=gateway_id,
            secret=secret,
            state_dir=tmp_path,
            state_dsn=require_pg(),
            lease_ttl_s=6.0,  # renewals every 1.5 s: a loaded machine never loses it by itself
            trust="open",
            backoff_base_s=0.05,
            backoff_cap_s=0.5,
        )
        self.ended = trio.Event()
        self.error: BaseException | None = None

    async def serve(self, *, task_status: trio.TaskStatus[Gateway]) -> None:
        try:
            await run_gateway(self.config, quiet_agent, dialer=self.dialer, task_status=task_status)
        except LeaseLost as exc:
            self.error = exc
        finally:
            self.ended.set()


async def test_a_standby_gateway_dials_only_once_the_lease_is_released(
    gateway_id: str, tmp_path: Path
) -> None:
    other = LeaseSql(require_pg(), gateway_id, "pg")
    token, _, _ = await trio.to_thread.run_sync(other.take, "host-z pid 9", 30.0)
    assert token is not None
    with trio.fail_after(GUARD_S), seen("relay: standby:") as waiting:
        async with trio.open_nursery() as nursery:
            scene = Scene(gateway_id, tmp_path, nursery)

            async def release_when_waiting() -> None:
                await waiting.wait()
                assert scene.dials == 0  # a standby never dials
                await trio.to_thread.run_sync(other.release, token)

            nursery.start_soon(release_when_waiting)
            gateway = await nursery.start(scene.serve)
            assert scene.dials >= 1 and gateway.dispatcher is not None
            nursery.cancel_scope.cancel()
    # A clean stop released the lease: the next process takes it at once.
    assert (await trio.to_thread.run_sync(other.take, "next", 30.0))[0] == token + 2
    other.discard()


async def test_a_gateway_whose_lease_is_taken_over_stops_serving(
    gateway_id: str, tmp_path: Path
) -> None:
    other = LeaseSql(require_pg(), gateway_id, "pg")
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            scene = Scene(gateway_id, tmp_path, nursery)
            await nursery.start(scene.serve)
            # The gateway stalled past its lease (as if paused); another process took over.
            # A renewal that lands between the expiry and the take revives the lease (its
            # token still matches), so the other process tries again, as a standby would.
            taken = None
            while taken is None:
                await trio.to_thread.run_sync(expire_now, gateway_id)
                taken, _, _ = await trio.to_thread.run_sync(other.take, "host-z pid 9", 30.0)
            assert taken == 2
            await scene.ended.wait()  # run_gateway returned: its sockets are closed
            nursery.cancel_scope.cancel()
    assert isinstance(scene.error, LeaseLost)
    # Seen by the next renewal, or by a state write's fencing check if one comes first.
    assert re.search(
        r"another process took it over|was taken over; write refused", str(scene.error)
    )
    other.discard()
