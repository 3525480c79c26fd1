"""A test kit for agent authors: a real gateway against the reference connector, in-process.

:func:`open_harness` starts the reference connector, a trust engine with the policy you
choose, and :func:`~relay_runtime.run_gateway` with your agent, all in your test's trio run.
:meth:`Harness.say` then sends one message as a user and returns what happened — the trust
decision and the replies the agent (or the trust engine) sent — once the gateway has
finished with it::

    from relay_runtime.testing import open_harness

    async def test_greets(autojump_clock) -> None:
        async with open_harness(my_agent) as harness:
            said = await harness.say("hello", user="discord:1234")
            assert said.allowed
            assert said.replies == ("hi there!",)

Everything runs for real — WebSocket upgrade with its HMAC bearer, frames, the SQLite state
db, the trust store — over one of two transports:

``memory`` (the default under trio's ``MockClock``)
    gateway and connector talk over :func:`trio.testing.memory_stream_pair`, no sockets, so
    the test is deterministic under ``autojump_clock`` and virtual time (an agent that
    sleeps ten minutes) passes at once. The state db and the trust store work in worker
    threads, and an autojumping ``MockClock`` would otherwise jump while one runs (the
    run loop looks idle), firing timeouts early. So in this mode the harness runs
    :func:`autojump_around_threads` for the harness's lifetime: the same jumps, never
    while a ``trio.to_thread`` call is in flight.
``loopback`` (the default under the real clock)
    the connector listens on ``127.0.0.1`` (a free port) and the gateway dials it over
    TCP. Use the real clock: a mock clock that jumps while bytes are in flight between two
    real sockets gives false timeouts.

Each message is delivered through the connector's ack-gated buffer, and :meth:`~Harness.say`
returns when the gateway acks it: the ack follows the turn's completion and its confirmed
replies (RC §7), so nothing is left in flight and no test needs to sleep.

For tests of a state store itself (its group commit, write-behind, a disk that fills up, a
PostgreSQL server that goes away) the kit has hooks below the store's interface:
:func:`run_operation`, :func:`write_behind`, :func:`count_batches`, :func:`cap_file`,
:func:`redirect_reconnects`, :func:`window_keys` and the others of ``_store``; they are the
only code that reaches into a store's internals for a test.
"""

from __future__ import annotations

from relay_runtime.testing._harness import DEFAULT_USER as DEFAULT_USER
from relay_runtime.testing._harness import GATEWAY_ID as GATEWAY_ID
from relay_runtime.testing._harness import MEMORY_RELAY_URL as MEMORY_RELAY_URL
from relay_runtime.testing._harness import OPERATOR as OPERATOR
from relay_runtime.testing._harness import SAY_TIMEOUT_S as SAY_TIMEOUT_S
from relay_runtime.testing._harness import STOP_TIMEOUT_S as STOP_TIMEOUT_S
from relay_runtime.testing._harness import Harness as Harness
from relay_runtime.testing._harness import Said as Said
from relay_runtime.testing._harness import Transport as Transport
from relay_runtime.testing._harness import autojump_around_threads as autojump_around_threads
from relay_runtime.testing._harness import open_harness as open_harness
from relay_runtime.testing._harness import parse_user as parse_user
from relay_runtime.testing._links import ResetStream as ResetStream
from relay_runtime.testing._links import reset_memory_dialer as reset_memory_dialer
from relay_runtime.testing._links import reset_stream_pair as reset_stream_pair
from relay_runtime.testing._replay import inline_threads as inline_threads
from relay_runtime.testing._replay import run_deterministic as run_deterministic
from relay_runtime.testing._replay import seeded_scheduler as seeded_scheduler
from relay_runtime.testing._store import BatchCount as BatchCount
from relay_runtime.testing._store import batch_running as batch_running
from relay_runtime.testing._store import between_batches as between_batches
from relay_runtime.testing._store import cap_file as cap_file
from relay_runtime.testing._store import claim_status as claim_status
from relay_runtime.testing._store import count_batches as count_batches
from relay_runtime.testing._store import count_completion_bulks as count_completion_bulks
from relay_runtime.testing._store import probe_connection as probe_connection
from relay_runtime.testing._store import redirect_reconnects as redirect_reconnects
from relay_runtime.testing._store import run_operation as run_operation
from relay_runtime.testing._store import trace_commits as trace_commits
from relay_runtime.testing._store import window_keys as window_keys
from relay_runtime.testing._store import write_behind as write_behind

__all__ = [
    "DEFAULT_USER",
    "BatchCount",
    "Harness",
    "Said",
    "Transport",
    "autojump_around_threads",
    "batch_running",
    "between_batches",
    "cap_file",
    "claim_status",
    "count_batches",
    "count_completion_bulks",
    "inline_threads",
    "open_harness",
    "parse_user",
    "probe_connection",
    "redirect_reconnects",
    "reset_memory_dialer",
    "reset_stream_pair",
    "run_deterministic",
    "run_operation",
    "seeded_scheduler",
    "trace_commits",
    "window_keys",
    "write_behind",
]
