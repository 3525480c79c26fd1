"""Issue 11, as a real process: a ``relay-runtime run`` child whose state files cannot grow.

``RLIMIT_FSIZE`` (with ``SIGXFSZ`` ignored, so a write past it fails with ``EFBIG`` instead
of killing the process) stands in for a full disk: the write-ahead log stops growing, every
commit fails. The child must say so once, go idle (the connector buffers), and end on
SIGTERM within the launcher's bound, or on its own after the storage-failure limit.
"""

from __future__ import annotations

import resource
import signal
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

from protocol import MessageEvent, SessionSource
from relay_runtime.connector import ReferenceConnector
from tests.e2e.conftest import (
    GATEWAY_ID,
    GUARD_S,
    GatewayProcess,
    gateway_env,
    gateway_process,
    new_secret,
)

#: Largest file the child may write: room for start-up, not for many commits.
FSIZE_LIMIT = 1 << 20
FAILED = "writing the state database failed"


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def limited_gateway(
    args: list[str], env: Mapping[str, str]
) -> AbstractAsyncContextManager[GatewayProcess]:
    return gateway_process(args, env, preexec_fn=_limit_file_size)


def message(n: int) -> MessageEvent:
    source = SessionSource(platform="telegram", chat_id=f"c{n % 7}", user_id="100")
    return MessageEvent(text="x" * 2000, source=source, message_id=f"m{n}")


@pytest.mark.parametrize("ending", ["sigterm", "limit"])
async def test_a_state_dir_that_cannot_grow_is_one_error_going_idle_and_a_bounded_end(
    tmp_path: Path, ending: str
) -> None:
    secret = new_secret()
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    env = gateway_env(
        secret,
        tmp_path / "state",
        GATEWAY_RELAY_STORAGE_FAILURE_LIMIT_S="3" if ending == "limit" else "600",
    )
    args = ["run", "--relay-url", "", "--trust", "open"]
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        args[2] = connector.base_url
        with trio.fail_after(GUARD_S * 2):
            async with limited_gateway(args, env) as gw:
                await gw.wait_line("gateway ready")
                sent = 0
                while not gw.saw(FAILED):
                    assert sent < 5000, "the file-size limit was never reached:\n" + gw.text()
                    await connector.inject(message(sent), gateway_id=GATEWAY_ID)
                    sent += 1
                    if sent == 40:
                        # From here on the files cannot grow at all: a retry smaller than
                        # the commit that failed (its turns ended meanwhile, so their
                        # frames are no longer written) must not fit under the limit.
                        resource.prlimit(gw.process.pid, resource.RLIMIT_FSIZE, (1, 1))
                    if sent % 20 == 0:  # keep about 20 in flight
                        await connector.wait_for(
                            lambda behind=sent - 20: len(connector.messages) >= behind
                        )
                await connector.wait_for(lambda: len(connector.going_idles) >= 1)
                if ending == "sigterm":
                    gw.signal(signal.SIGTERM)
                    with trio.fail_after(10):  # the launcher's documented bound
                        code = await gw.wait_exit()
                else:
                    with trio.fail_after(3 + 10):
                        code = await gw.wait_exit()
        nursery.cancel_scope.cancel()
    errors = [line for line in gw.lines if FAILED in line]
    assert len(errors) == 1, gw.text()  # one ERROR per episode, never a spin
    assert "disk is full" in errors[0] or "disk I/O error" in errors[0], errors[0]
    if ending == "sigterm":
        assert code == 0, gw.text()
    else:
        assert code == 1, gw.text()
        assert gw.saw("could not be written for 3 s"), gw.text()
        # The exit is one error line for the operator, not a traceback.
        assert "Traceback" not in gw.text(), gw.text()
        assert sum("relay-runtime: error:" in line for line in gw.lines) == 1, gw.text()
