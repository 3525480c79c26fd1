"""Fuzz: hypothesis-made frames and byte garbage against a live gateway socket (RC §2).

A real gateway dials the reference connector on loopback. The connector then writes, as
WebSocket messages on that live socket, thousands of lines drawn by hypothesis strategies:
JSON frames of every known ``type`` with missing, mistyped or random fields, random JSON
values, random text, raw bytes (as binary messages, through the gateway's incremental UTF-8
decoder) and a few oversized frames. After every batch a valid ``inbound`` must still be
answered. At the end the gateway is READY on its first and only connection, and its log has
at most one single-line record per rejected frame (RC §2: one WARNING/ERROR per frame, never
a traceback).

Short mode runs in CI (a few thousand frames, seconds). ``RELAY_FUZZ_LONG=1`` runs 100,000.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from protocol import MessageEvent, SessionSource
from relay_runtime._gateway import AdmitAll, Gateway, run_gateway
from relay_runtime.config import GatewayConfig
from relay_runtime.connector import ReferenceConnector

GATEWAY_ID = "gw-fuzz"
LONG = os.environ.get("RELAY_FUZZ_LONG") == "1"
FRAMES = 100_000 if LONG else 3_000
BATCH = 500
#: Examples per hypothesis run (one huge run trips a hypothesis-internal assertion).
CHUNK = 2_000
MAX_FRAME_BYTES = 4096
TIMEOUT_S = 1800.0 if LONG else 45.0

FRAME_TYPES = [
    "descriptor",
    "inbound",
    "outbound_result",
    "interrupt_inbound",
    "passthrough_forward",
    "going_idle_ack",
    "hello",
    "outbound",
    "inbound_ack",
]

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(st.characters(codec="utf-8"), max_size=20)
)
json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["event", "text", "source", "chat_id", "platform", "requestId", "result", "bufferId",
     "descriptor", "forward", "session_key", "sessionKey", "message_id", "user_id"]
)  # fmt: skip
typed_frames = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(FRAME_TYPES) | st.text(max_size=12),
    st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=5),
)
#: One line as text: a typed frame, any JSON value, or arbitrary text (no newline inside).
text_lines = (
    typed_frames.map(lambda f: json.dumps(f, ensure_ascii=False))
    | json_values.map(lambda v: json.dumps(v, ensure_ascii=False))
    | st.text(st.characters(codec="utf-8"), max_size=200)
).map(lambda line: line.replace("\n", " ").replace("\r", " "))
#: A whole message: a text line (sent as text) or raw bytes (sent as binary).
messages = text_lines.map(lambda line: line + "\n") | st.binary(max_size=300).map(
    lambda raw: raw.replace(b"\n", b" ") + b"\n"
)


def corpus(count: int) -> list[str | bytes]:
    """``count`` messages drawn by hypothesis, in seeded chunks (the same corpus every run)."""
    drawn: list[str | bytes] = []
    for chunk in range(0, count, CHUNK):

        @seed(chunk)
        @settings(
            max_examples=min(CHUNK, count - chunk),
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(messages)
        def collect(message: str | bytes) -> None:
            drawn.append(message)

        collect()
    oversized = "x" * (MAX_FRAME_BYTES + 10) + "\n"
    drawn[:: max(1, count // 5)] = [oversized] * len(drawn[:: max(1, count // 5)])
    return drawn


def _valid(number: int) -> MessageEvent:
    message_id = f"ok{number}"
    return MessageEvent(
        text=f"still alive {number}",
        message_id=message_id,
        source=SessionSource(
            platform="discord",
            chat_id="4242",
            chat_type="dm",
            user_id="4343",
            user_name="fuzzer",
            message_id=message_id,
        ),
    )


async def echo(turn: Any) -> str:
    return f"echo {turn.text}"


async def _gateway(config: GatewayConfig, *, task_status: trio.TaskStatus[Gateway]) -> None:
    await run_gateway(config, echo, trust=AdmitAll(), task_status=task_status)


@pytest.mark.timeout(TIMEOUT_S + 600)
async def test_fuzz_gateway_survives_garbage_frames(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frames = corpus(FRAMES)
    secret = secrets.token_urlsafe(32)
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    caplog.set_level(logging.INFO, logger="relay_runtime")
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(connector.serve, "127.0.0.1", 0)
            config = GatewayConfig(
                relay_url=connector.base_url,
                gateway_id=GATEWAY_ID,
                secret=secret,
                state_dir=tmp_path,
                max_frame_bytes=MAX_FRAME_BYTES,
            )
            gateway: Gateway = await nursery.start(_gateway, config)
            conn = await connector.wait_connected(GATEWAY_ID)
            rejected_before = gateway.stats["malformed_frames"]
            for start in range(0, len(frames), BATCH):
                for message in frames[start : start + BATCH]:
                    if isinstance(message, bytes):
                        await conn.ws.send_message(message)
                    else:
                        assert await connector.send_raw(message, gateway_id=GATEWAY_ID)
                number = start // BATCH
                await connector.inject(_valid(number), gateway_id=GATEWAY_ID)
                reply = f"echo still alive {number}"

                def answered(reply: str = reply) -> bool:
                    return any(m.content == reply for m in connector.messages.values())

                with trio.fail_after(10):
                    await connector.wait_for(answered)
            stats = gateway.stats
            nursery.cancel_scope.cancel()

    assert stats["state"] == "ready"
    assert stats["handshakes"] == 1 and stats["drops"] == 0, stats
    rejected = stats["malformed_frames"] - rejected_before
    assert rejected >= len(frames) // 5, f"only {rejected} frames rejected"
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    frame_lines = [r for r in records if r.name == "relay_runtime.supervisor"]
    assert len(frame_lines) <= rejected, (len(frame_lines), rejected)
    for record in frame_lines:
        text = record.getMessage()
        assert "\n" not in text and record.exc_info is None, text
        assert text.startswith("relay"), text
    print(f"fuzz: {len(frames)} frames, {rejected} rejected, {len(frame_lines)} log lines")
