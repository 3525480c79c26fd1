"""An agent backed by an OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM).

Configured from the environment:

* ``RELAY_AGENT_BASE_URL`` — API base, e.g. ``http://127.0.0.1:11434/v1`` (Ollama) or
  ``http://127.0.0.1:8000/v1`` (vLLM); ``/chat/completions`` is appended. Default: Ollama's.
* ``RELAY_AGENT_MODEL`` — the model name (required).
* ``RELAY_AGENT_API_KEY`` — sent as a bearer token when set; never logged.
* ``RELAY_AGENT_TIMEOUT_S`` (120), ``RELAY_AGENT_SYSTEM_PROMPT`` (none),
  ``RELAY_AGENT_HISTORY`` (20 messages kept per session).

Each session keeps a bounded history of its last exchanges (in memory). When the platform
supports edits, the answer is streamed (SSE): a first message is sent as soon as text
arrives, then edited at most once per ``edit_interval_s`` as more comes in.
"""

from __future__ import annotations

import collections
import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import httpx
import trio

if TYPE_CHECKING:
    from protocol._descriptor import CapabilityDescriptor
    from protocol._results import SendResult


logger = logging.getLogger("relay_runtime.agents.openai_chat")

DEFAULT_BASE_URL: Final = "http://127.0.0.1:11434/v1"
TYPING_EVERY_S: Final = 5.0
#: Sessions whose history is kept (least recently used forgotten first).
MAX_SESSIONS: Final = 1000

UNREACHABLE_REPLY: Final = "Sorry, the language model is unreachable right now. Please try again."
TIMEOUT_REPLY: Final = "Sorry, the language model did not answer in time. Please try again."
HTTP_ERROR_REPLY: Final = "Sorry, the language model returned an error (HTTP {status})."
BAD_REPLY: Final = "Sorry, the language model sent an answer I could not read."
CUT_OFF_NOTE: Final = "\n\n[answer cut off: the language model stopped responding]"


class AgentConfigError(Exception):
    """A ``RELAY_AGENT_*`` setting is missing or invalid."""


class ChatTurn(Protocol):
    """The part of :class:`relay_runtime._turn.Turn` this agent uses."""

    @property
    def text(self) -> str: ...
    @property
    def session_key(self) -> str: ...
    @property
    def descriptor(self) -> CapabilityDescriptor: ...
    async def reply(self, text: str) -> SendResult: ...
    async def edit(self, message_id: str, text: str) -> object: ...
    async def typing(self) -> object: ...


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise AgentConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise AgentConfigError(f"{name} must be > 0, got {raw!r}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AgentConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise AgentConfigError(f"{name} must be >= 0, got {raw!r}")
    return value


@attrs.frozen
class OpenAIChatConfig:
    """Settings of :class:`OpenAIChatAgent`."""

    model: str
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = attrs.field(default=None, repr=False)
    timeout_s: float = 120.0
    system_prompt: str | None = None
    #: Messages (user and assistant) remembered per session; 0 = no history.
    history_messages: int = 20
    #: Minimum spacing of streaming edits.
    edit_interval_s: float = 1.0

    def __attrs_post_init__(self) -> None:
        url = httpx.URL(self.base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise AgentConfigError(
                f"RELAY_AGENT_BASE_URL must be an http(s) URL with a host, got {self.base_url!r}"
            )
        if not self.model:
            raise AgentConfigError("RELAY_AGENT_MODEL is not set (the model name to use)")

    @property
    def completions_url(self) -> str:
        """The chat-completions endpoint."""
        return self.base_url.rstrip("/") + "/chat/completions"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OpenAIChatConfig:
        """Read ``RELAY_AGENT_*``; empty values count as unset."""
        env = os.environ if env is None else env
        return cls(
            model=env.get("RELAY_AGENT_MODEL", "").strip(),
            base_url=env.get("RELAY_AGENT_BASE_URL", "").strip() or DEFAULT_BASE_URL,
            api_key=env.get("RELAY_AGENT_API_KEY", "").strip() or None,
            timeout_s=_positive_float(env, "RELAY_AGENT_TIMEOUT_S", 120.0),
            system_prompt=env.get("RELAY_AGENT_SYSTEM_PROMPT", "").strip() or None,
            history_messages=_positive_int(env, "RELAY_AGENT_HISTORY", 20),
        )


class _ModelError(Exception):
    """The model call failed; ``reply`` is what the user is told."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@attrs.define
class _Stream:
    """The streamed message being built: its text and what the chat shows of it."""

    text: str = ""
    message_id: str | None = None
    shown: str = ""
    next_edit_at: float = 0.0
    #: False once the message cannot be edited further (send failed, or it is full).
    live: bool = True
    #: Text delivered (or queued) as a message that cannot be edited.
    sent_prefix: str = ""
    #: True once ``[DONE]`` arrived.
    done: bool = False


class OpenAIChatAgent:
    """An agent (``await agent(turn)``) answering with an OpenAI-compatible model.

    ``transport`` replaces httpx's network transport (tests); otherwise each turn opens
    its own short-lived client, so nothing outlives the turn that made it.
    """

    def __init__(
        self, config: OpenAIChatConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport
        self._histories: collections.OrderedDict[str, collections.deque[dict[str, str]]] = (
            collections.OrderedDict()
        )

    async def __call__(self, turn: ChatTurn) -> str | None:
        """Answer one turn. Model failures become a short apology, never an exception."""
        if not turn.text.strip():
            return None
        messages = self._messages(turn.session_key, turn.text)
        stream = turn.descriptor.supports_edit
        state = _Stream()
        failure: str | None = None
        answer = ""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_typing, turn)
            try:
                with trio.fail_after(self.config.timeout_s):
                    if stream:
                        await self._stream(turn, messages, state)
                        answer = state.text
                    else:
                        answer = await self._complete(messages)
            except trio.TooSlowError:
                if state.done:  # the answer was complete; only the stream's close hung
                    answer = state.text
                else:
                    failure = TIMEOUT_REPLY
                    logger.warning(
                        "openai_chat: model %s timed out after %.0f s",
                        self.config.model,
                        self.config.timeout_s,
                    )
            except _ModelError as exc:
                failure = exc.reply
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            return await self._fail(turn, state, failure)
        self._remember(turn.session_key, turn.text, answer)
        if not stream:
            return answer or None
        if state.message_id is None:
            return answer[len(state.sent_prefix) :].strip() or None
        return await self._finish_stream(turn, state)

    # ------------------------------------------------------------------ history

    def _messages(self, session_key: str, text: str) -> list[dict[str, str]]:
        messages: list[dict[str, str]] = []
        if self.config.system_prompt:
            messages.append({"role": "system", "content": self.config.system_prompt})
        history = self._histories.get(session_key)
        if history:
            messages.extend(history)
        messages.append({"role": "user", "content": text})
        return messages

    def _remember(self, session_key: str, text: str, answer: str) -> None:
        limit = self.config.history_messages
        if limit <= 0 or not answer:
            return
        history = self._histories.get(session_key)
        if history is None:
            history = self._histories[session_key] = collections.deque(maxlen=limit)
        self._histories.move_to_end(session_key)
        history.append({"role": "user", "content": text})
        history.append({"role": "assistant", "content": answer})
        while len(self._histories) > MAX_SESSIONS:
            self._histories.popitem(last=False)

    def history(self, session_key: str) -> list[dict[str, str]]:
        """The remembered messages of one session, oldest first."""
        return list(self._histories.get(session_key, ()))

    # --------------------------------------------------------------- model calls

    def _client(self) -> httpx.AsyncClient:
        headers = {"accept": "application/json"}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        return httpx.AsyncClient(
            transport=self._transport,
            headers=headers,
            timeout=httpx.Timeout(self.config.timeout_s),
            follow_redirects=False,
        )

    def _body(self, messages: list[dict[str, str]], *, stream: bool) -> dict[str, Any]:
        return {"model": self.config.model, "messages": messages, "stream": stream}

    async def _complete(self, messages: list[dict[str, str]]) -> str:
        async with self._client() as client:
            try:
                response = await client.post(
                    self.config.completions_url, json=self._body(messages, stream=False)
                )
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from exc
            self._check_status(response.status_code, response.text)
            return self._parse_completion(response.content)

    def _parse_completion(self, body: bytes) -> str:
        """The answer text of a non-streamed chat completion."""
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise self._malformed(exc) from exc
        if content is None:
            return ""
        if not isinstance(content, str):
            raise self._malformed(TypeError(f"content is {type(content).__name__}"))
        return content

    async def _stream(self, turn: ChatTurn, messages: list[dict[str, str]], state: _Stream) -> None:
        body = self._body(messages, stream=True)
        try:
            async with (
                self._client() as client,
                client.stream("POST", self.config.completions_url, json=body) as response,
            ):
                if response.status_code != 200:
                    text = (await response.aread()).decode("utf-8", "replace")
                    self._check_status(response.status_code, text)
                if response.headers.get("content-type", "").startswith("application/json"):
                    # A server that ignores ``stream: true`` answers in one piece.
                    state.text = self._parse_completion(await response.aread())
                    await self._show(turn, state)
                    return
                # Read to the end even after [DONE]: leaving httpx's stream iterators
                # half-consumed leaks them until garbage collection.
                async for line in response.aiter_lines():
                    if state.done:
                        continue
                    delta = self._sse_delta(line)
                    if delta is None:
                        state.done = True
                    elif delta:
                        state.text += delta
                        await self._show(turn, state)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    @staticmethod
    def _sse_delta(line: str) -> str | None:
        """The text a ``data:`` line adds ("" for none); ``None`` at ``[DONE]``."""
        if not line.startswith("data:"):
            return ""  # blank separators, comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            return None
        try:
            choices = json.loads(data).get("choices") or []
            content = choices[0].get("delta", {}).get("content") if choices else None
        except (ValueError, AttributeError, TypeError):
            logger.warning("openai_chat: unreadable stream chunk ignored")
            return ""
        return content if isinstance(content, str) else ""

    def _check_status(self, status: int, body: str) -> None:
        if status == 200:
            return
        logger.warning(
            "openai_chat: model %s answered HTTP %d: %s", self.config.model, status, body[:200]
        )
        raise _ModelError(HTTP_ERROR_REPLY.format(status=status))

    def _unreachable(self, exc: httpx.HTTPError) -> _ModelError:
        logger.warning(
            "openai_chat: model endpoint %s unreachable: %s",
            self.config.completions_url,
            type(exc).__name__,
        )
        return _ModelError(UNREACHABLE_REPLY)

    def _malformed(self, exc: Exception) -> _ModelError:
        logger.warning("openai_chat: unreadable answer from the model: %s", type(exc).__name__)
        return _ModelError(BAD_REPLY)

    # ----------------------------------------------------------- chat side effects

    async def _keep_typing(self, turn: ChatTurn) -> None:
        while True:
            try:
                await turn.typing()
            except Exception:  # typing is cosmetic; a failure must not end the turn
                logger.debug("openai_chat: typing failed", exc_info=True)
                return
            await trio.sleep(TYPING_EVERY_S)

    async def _show(self, turn: ChatTurn, state: _Stream) -> None:
        """Send the first message, or edit it if the last edit is old enough."""
        if not state.live or not state.text.strip():
            return
        descriptor = turn.descriptor
        if descriptor.length(state.text) > descriptor.max_message_length:
            # Too long for one message: stop streaming; the rest follows at the end.
            return
        now = trio.current_time()
        if state.message_id is None:
            result = await turn.reply(state.text)
            if result.message_id is None:
                # Nothing to edit. A queued (or id-less) message will still show, so only
                # the rest of the answer is sent at the end.
                state.live = False
                if result.success or result.queued:
                    state.sent_prefix = state.text
                return
            state.message_id = result.message_id
            state.shown = state.text
            state.next_edit_at = now + self.config.edit_interval_s
        elif now >= state.next_edit_at and state.text != state.shown:
            await turn.edit(state.message_id, state.text)
            state.shown = state.text
            state.next_edit_at = trio.current_time() + self.config.edit_interval_s

    async def _finish_stream(self, turn: ChatTurn, state: _Stream) -> str | None:
        """Bring the streamed message up to date; return the part that did not fit."""
        assert state.message_id is not None
        head, rest = _split_to_fit(state.text, turn.descriptor)
        if head != state.shown:
            await turn.edit(state.message_id, head)
        return rest or None

    async def _fail(self, turn: ChatTurn, state: _Stream, reply: str) -> str | None:
        """Tell the user; a partly streamed answer is marked as cut off instead."""
        if state.message_id is None:
            return reply
        head, _ = _split_to_fit(state.text + CUT_OFF_NOTE, turn.descriptor)
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await turn.edit(state.message_id, head)
        return None


def _split_to_fit(text: str, descriptor: CapabilityDescriptor) -> tuple[str, str]:
    """Split ``text`` into a head that fits one message and the rest (maybe ``""``)."""
    limit = descriptor.max_message_length
    if descriptor.length(text) <= limit:
        return text, ""
    # Longest prefix within the limit (lengths are monotone in the prefix).
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if descriptor.length(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    cut = lo
    # Prefer a line or word boundary in the second half of the head.
    for sep in ("\n", " "):
        at = text.rfind(sep, 0, lo)
        if at > lo // 2:
            cut = at + 1
            break
    return text[:cut].rstrip(), text[cut:].lstrip()


def validate_env(environ: Mapping[str, str] | None = None) -> OpenAIChatConfig:
    """The startup check of the shipped :func:`openai_chat` agent.

    Reads and validates ``RELAY_AGENT_*`` (``os.environ`` by default) without touching the
    network; raises :class:`AgentConfigError` naming the variable, so a launcher can refuse
    to start (exit 2) instead of failing at the first turn.
    """
    return OpenAIChatConfig.from_env(environ)


_default_agent: OpenAIChatAgent | None = None


async def openai_chat(turn: ChatTurn) -> str | None:
    """The shipped agent: an :class:`OpenAIChatAgent` configured from ``RELAY_AGENT_*``.

    The configuration is read at the first turn; a bad one raises
    :class:`AgentConfigError` naming the variable. Call :func:`validate_env` at startup to
    find that out before serving.
    """
    global _default_agent
    if _default_agent is None:
        _default_agent = OpenAIChatAgent(OpenAIChatConfig.from_env())
    return await _default_agent(turn)
