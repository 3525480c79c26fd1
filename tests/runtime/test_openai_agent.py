"""The OpenAI-compatible chat agent and the echo agent.

Wire behaviour runs against a real HTTP server on 127.0.0.1 (h11 over trio sockets) that
speaks chat-completions, plain and SSE. Time-dependent behaviour (edit cadence, timeout)
runs under the autojump MockClock with an httpx transport whose handler sleeps in trio time.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import h11
import httpx
import pytest
import trio
import trio.testing

from protocol import CapabilityDescriptor, SendResult, placeholder_descriptor
from relay_runtime.agents import echo, openai_chat
from relay_runtime.agents._openai_chat import (
    BAD_REPLY,
    CUT_OFF_NOTE,
    TIMEOUT_REPLY,
    UNREACHABLE_REPLY,
    AgentConfigError,
    OpenAIChatAgent,
    OpenAIChatConfig,
    validate_env,
)

API_KEY = "sk-test-very-secret-key-0123456789"


# ------------------------------------------------------------------ stand-in Turn


@attrs.define
class FakeTurn:
    """Records what the agent did to the chat, with the trio time of each action."""

    text: str
    session_key: str = "agent:main:relay:dm:u1"
    descriptor: CapabilityDescriptor = attrs.field(
        factory=lambda: attrs.evolve(placeholder_descriptor("relay"), supports_edit=False)
    )
    send_ok: bool = True
    queue_sends: bool = False
    actions: list[tuple[str, float, str]] = attrs.field(factory=list)
    typing_count: int = 0

    async def reply(self, text: str) -> SendResult:
        self.actions.append(("reply", trio.current_time(), text))
        if not self.send_ok:
            return SendResult(success=False, error="relay transport closed", retryable=True)
        if self.queue_sends:
            return SendResult(success=False, queued=True, outbox_id=7)
        return SendResult(success=True, message_id="msg-1")

    async def edit(self, message_id: str, text: str) -> SendResult:
        assert message_id == "msg-1"
        self.actions.append(("edit", trio.current_time(), text))
        return SendResult(success=True, message_id=message_id)

    async def typing(self) -> SendResult:
        self.typing_count += 1
        return SendResult(success=True)


def editing(max_len: int = 4096) -> CapabilityDescriptor:
    return attrs.evolve(
        placeholder_descriptor("relay"), supports_edit=True, max_message_length=max_len
    )


# ------------------------------------------------------- a real chat-completions server


Responder = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, str], list[bytes]]]]


@attrs.define
class FakeModelServer:
    """A chat-completions endpoint on 127.0.0.1 that records each request."""

    responder: Responder
    port: int = 0
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = attrs.field(factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return
        assert request is not None
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        payload = json.loads(body)
        self.requests.append((request.target.decode(), headers, payload))
        status, resp_headers, chunks = await self.responder(payload)
        out_headers = [(k, v) for k, v in resp_headers.items()] + [("connection", "close")]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=out_headers)))
        for chunk in chunks:
            await stream.send_all(conn.send(h11.Data(data=chunk)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        await stream.aclose()


async def start_server(nursery: trio.Nursery, responder: Responder) -> FakeModelServer:
    server = FakeModelServer(responder)
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
    )
    server.port = listeners[0].socket.getsockname()[1]
    return server


def completion(text: str) -> list[bytes]:
    return [
        json.dumps(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        ).encode()
    ]


def sse(deltas: list[str], *, done: bool = True) -> list[bytes]:
    chunks = [
        b"data: "
        + json.dumps({"choices": [{"index": 0, "delta": {"content": d}}]}).encode()
        + b"\n\n"
        for d in deltas
    ]
    if done:
        chunks.append(b"data: [DONE]\n\n")
    return chunks


def answer_with(text: str) -> Responder:
    async def respond(payload: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
        if payload["stream"]:
            return 200, {"content-type": "text/event-stream"}, sse([text[:3], text[3:]])
        return 200, {"content-type": "application/json"}, completion(text)

    return respond


def agent_for(server_url: str, **kw: Any) -> OpenAIChatAgent:
    return OpenAIChatAgent(
        OpenAIChatConfig(model="test-model", base_url=server_url, api_key=API_KEY, **kw)
    )


# ------------------------------------------------------------------------ echo


async def test_echo_replies_with_the_text_unchanged() -> None:
    assert await echo(FakeTurn(text="  Hello, 世界 😀 ")) == "  Hello, 世界 😀 "


# -------------------------------------------------------- real server: plain answers


async def test_non_streaming_answer_over_loopback(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start_server(nursery, answer_with("Hi there!"))
    agent = agent_for(server.base_url, system_prompt="Be brief.")
    turn = FakeTurn(text="hello")
    assert await agent(turn) == "Hi there!"
    [(target, headers, payload)] = server.requests
    assert target == "/v1/chat/completions"
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert headers["content-type"] == "application/json"
    assert payload == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
        ],
        "stream": False,
    }
    assert turn.typing_count >= 1
    assert turn.actions == []  # the runner sends the returned text
    assert caplog.records  # httpx/httpcore debug logging was captured ...
    assert all(API_KEY not in r.getMessage() for r in caplog.records)  # ... without the key


async def test_history_is_per_session_and_bounded(nursery: trio.Nursery) -> None:
    async def respond(payload: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
        return (
            200,
            {"content-type": "application/json"},
            completion(f"re:{payload['messages'][-1]['content']}"),
        )

    server = await start_server(nursery, respond)
    agent = agent_for(server.base_url, history_messages=4)
    for text in ("a", "b", "c"):
        await agent(FakeTurn(text=text, session_key="s1"))
    await agent(FakeTurn(text="x", session_key="s2"))

    # The third s1 request carried the two earlier exchanges.
    assert server.requests[2][2]["messages"] == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "re:a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "re:b"},
        {"role": "user", "content": "c"},
    ]
    # s2 saw nothing of s1.
    assert server.requests[3][2]["messages"] == [{"role": "user", "content": "x"}]
    # Bounded: only the last 4 messages of s1 are kept.
    assert agent.history("s1") == [
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "re:b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "re:c"},
    ]


async def test_streaming_over_loopback_sends_then_edits_to_full_text(nursery: trio.Nursery) -> None:
    async def respond(payload: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
        assert payload["stream"] is True
        return (
            200,
            {"content-type": "text/event-stream"},
            [
                b": keep-alive comment\n\n",
                *sse(["Hel", "lo ", "wor", "ld"]),
            ],
        )

    server = await start_server(nursery, respond)
    agent = agent_for(server.base_url)
    turn = FakeTurn(text="hi", descriptor=editing())
    assert await agent(turn) is None
    kinds = [a[0] for a in turn.actions]
    assert kinds[0] == "reply"
    assert turn.actions[0][2] == "Hel"
    assert kinds.count("reply") == 1
    assert turn.actions[-1][:1] == ("edit",)
    assert turn.actions[-1][2] == "Hello world"
    assert agent.history(turn.session_key)[-1] == {"role": "assistant", "content": "Hello world"}


async def test_stream_request_answered_with_plain_json(nursery: trio.Nursery) -> None:
    async def respond(payload: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
        return 200, {"content-type": "application/json"}, completion("whole answer")

    server = await start_server(nursery, respond)
    turn = FakeTurn(text="hi", descriptor=editing())
    assert await agent_for(server.base_url)(turn) is None
    assert turn.actions == [("reply", turn.actions[0][1], "whole answer")]


async def test_streamed_answer_longer_than_a_message_returns_the_rest(
    nursery: trio.Nursery,
) -> None:
    words = [f"word{i} " for i in range(10)]  # 60 chars in all

    async def respond(payload: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
        return 200, {"content-type": "text/event-stream"}, sse(words)

    server = await start_server(nursery, respond)
    turn = FakeTurn(text="hi", descriptor=editing(max_len=20))
    rest = await agent_for(server.base_url)(turn)
    shown = turn.actions[-1][2]
    assert len(shown) <= 20
    assert rest is not None
    assert f"{shown} {rest}".split() == "".join(words).split()
    assert shown.endswith("word2")  # cut at a word boundary


# ----------------------------------------------------------- real server: failures


async def test_model_down_gives_a_clear_reply_without_leaking_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = agent_for(f"http://127.0.0.1:{port}/v1")
    for descriptor in (editing(), FakeTurn(text="").descriptor):
        turn = FakeTurn(text="hello", descriptor=descriptor)
        assert await agent(turn) == UNREACHABLE_REPLY
    assert agent.history("agent:main:relay:dm:u1") == []
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    assert all(API_KEY not in r.getMessage() for r in caplog.records)
    assert all(API_KEY not in repr(r.args) for r in caplog.records)


@pytest.mark.parametrize("stream", [False, True])
async def test_http_error_status_is_reported(
    nursery: trio.Nursery, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def respond(payload: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
        return 404, {"content-type": "application/json"}, [b'{"error":"model not found"}']

    server = await start_server(nursery, respond)
    turn = FakeTurn(text="hi", descriptor=editing() if stream else FakeTurn(text="").descriptor)
    assert (
        await agent_for(server.base_url)(turn)
        == "Sorry, the language model returned an error (HTTP 404)."
    )
    assert any(
        "HTTP 404" in r.getMessage() and "model not found" in r.getMessage() for r in caplog.records
    )


async def test_unreadable_answer_is_reported(nursery: trio.Nursery) -> None:
    async def respond(payload: dict[str, Any]) -> tuple[int, dict[str, str], list[bytes]]:
        return 200, {"content-type": "application/json"}, [b'{"choices": []}']

    server = await start_server(nursery, respond)
    assert await agent_for(server.base_url)(FakeTurn(text="hi")) == BAD_REPLY


async def test_empty_text_makes_no_call(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, answer_with("x"))
    assert await agent_for(server.base_url)(FakeTurn(text="   ")) is None
    assert server.requests == []


# --------------------------------------------- MockClock: edit cadence and timeout


def sleepy_transport(
    plan: list[tuple[float, str]], *, hang_after: bool = False
) -> httpx.MockTransport:
    """Streams each delta after its delay (trio time); optionally never finishes."""

    async def handler(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            for delay, delta in plan:
                await trio.sleep(delay)
                yield sse([delta], done=False)[0]
            if hang_after:
                await trio.sleep_forever()
            yield b"data: [DONE]\n\n"

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    return httpx.MockTransport(handler)


def mock_agent(transport: httpx.AsyncBaseTransport, **kw: Any) -> OpenAIChatAgent:
    return OpenAIChatAgent(
        OpenAIChatConfig(model="m", base_url="http://model.test/v1", **kw), transport=transport
    )


async def test_streaming_edits_at_most_once_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A delta every 0.25 s for 3 s, then the end.
    plan = [(0.25, f"{i} ") for i in range(12)]
    turn = FakeTurn(text="go", descriptor=editing())
    start = trio.current_time()
    assert await mock_agent(sleepy_transport(plan))(turn) is None
    times = [t - start for _, t, _ in turn.actions]
    kinds = [k for k, _, _ in turn.actions]
    # First message at the first delta; edits 1 s apart; a final catch-up edit at the end.
    assert kinds == ["reply", "edit", "edit", "edit"]
    assert times == pytest.approx([0.25, 1.25, 2.25, 3.0])
    assert turn.actions[1][2] == "0 1 2 3 4 "
    assert turn.actions[-1][2] == "".join(d for _, d in plan)


async def test_non_streaming_timeout_under_mock_clock(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep(1000)
        return httpx.Response(200, json={"choices": [{"message": {"content": "late"}}]})

    turn = FakeTurn(text="hi")
    start = trio.current_time()
    agent = mock_agent(httpx.MockTransport(handler), timeout_s=30)
    assert await agent(turn) == TIMEOUT_REPLY
    assert trio.current_time() - start == pytest.approx(30)
    assert agent.history(turn.session_key) == []
    # Typing was refreshed while waiting (every 5 s).
    assert turn.typing_count >= 6
    assert any("timed out" in r.getMessage() for r in caplog.records)


async def test_stream_stall_marks_the_partial_answer_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turn = FakeTurn(text="hi", descriptor=editing())
    agent = mock_agent(sleepy_transport([(0.5, "partial")], hang_after=True), timeout_s=10)
    assert await agent(turn) is None
    assert turn.actions[0][0] == "reply"
    assert turn.actions[-1][0] == "edit"
    assert turn.actions[-1][2] == "partial" + CUT_OFF_NOTE


async def test_failed_first_send_falls_back_to_returning_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turn = FakeTurn(text="hi", descriptor=editing(), send_ok=False)
    answer = await mock_agent(sleepy_transport([(0.1, "ab"), (2, "cd")]))(turn)
    assert answer == "abcd"
    assert [k for k, _, _ in turn.actions] == ["reply"]


async def test_queued_first_send_returns_only_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turn = FakeTurn(text="hi", descriptor=editing(), queue_sends=True)
    answer = await mock_agent(sleepy_transport([(0.1, "Hello"), (2, " world")]))(turn)
    assert [a[2] for a in turn.actions] == ["Hello"]
    assert answer == "world"


async def test_interrupt_cancels_the_model_call(autojump_clock: trio.testing.MockClock) -> None:
    turn = FakeTurn(text="hi", descriptor=editing())
    agent = mock_agent(sleepy_transport([(0.5, "a")], hang_after=True), timeout_s=100)
    with trio.move_on_after(5) as scope:
        await agent(turn)
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(5)
    assert agent.history(turn.session_key) == []


# ------------------------------------------------------------------ configuration


def test_config_from_env() -> None:
    config = OpenAIChatConfig.from_env(
        {
            "RELAY_AGENT_BASE_URL": "http://127.0.0.1:8000/v1/",
            "RELAY_AGENT_MODEL": "qwen",
            "RELAY_AGENT_API_KEY": API_KEY,
            "RELAY_AGENT_TIMEOUT_S": "12.5",
            "RELAY_AGENT_HISTORY": "",
        }
    )
    assert config.completions_url == "http://127.0.0.1:8000/v1/chat/completions"
    assert (config.model, config.timeout_s, config.history_messages) == ("qwen", 12.5, 20)
    assert API_KEY not in repr(config)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "RELAY_AGENT_MODEL is not set"),
        ({"RELAY_AGENT_MODEL": "m", "RELAY_AGENT_BASE_URL": "ftp://x"}, "RELAY_AGENT_BASE_URL"),
        ({"RELAY_AGENT_MODEL": "m", "RELAY_AGENT_TIMEOUT_S": "soon"}, "RELAY_AGENT_TIMEOUT_S"),
        ({"RELAY_AGENT_MODEL": "m", "RELAY_AGENT_TIMEOUT_S": "0"}, "RELAY_AGENT_TIMEOUT_S"),
        ({"RELAY_AGENT_MODEL": "m", "RELAY_AGENT_HISTORY": "-1"}, "RELAY_AGENT_HISTORY"),
    ],
)
def test_config_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(AgentConfigError, match=message):
        OpenAIChatConfig.from_env(env)


async def test_shipped_openai_chat_reads_the_environment(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(nursery, answer_with("from env"))
    # The package attribute is the agent function; the module is reached by name.
    module = importlib.import_module("relay_runtime.agents._openai_chat")
    monkeypatch.setattr(module, "_default_agent", None)
    monkeypatch.setenv("RELAY_AGENT_BASE_URL", server.base_url)
    monkeypatch.setenv("RELAY_AGENT_MODEL", "env-model")
    monkeypatch.delenv("RELAY_AGENT_API_KEY", raising=False)
    assert await openai_chat(FakeTurn(text="hi")) == "from env"
    [(_, headers, payload)] = server.requests
    assert payload["model"] == "env-model"
    assert "authorization" not in headers


def test_validate_env_is_the_startup_check(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AgentConfigError, match="RELAY_AGENT_MODEL is not set"):
        validate_env({"RELAY_AGENT_BASE_URL": "http://127.0.0.1:9/v1"})
    with pytest.raises(AgentConfigError, match="RELAY_AGENT_TIMEOUT_S"):
        validate_env({"RELAY_AGENT_MODEL": "m", "RELAY_AGENT_TIMEOUT_S": "-3"})
    config = validate_env({"RELAY_AGENT_MODEL": "m", "RELAY_AGENT_API_KEY": API_KEY})
    assert (config.model, config.api_key) == ("m", API_KEY)
    monkeypatch.setenv("RELAY_AGENT_MODEL", "from-os-environ")
    assert validate_env().model == "from-os-environ"
