"""``relay-runtime demo``: chat with the echo agent through a local connector, in a console.

Everything runs in this process: the reference connector on ``127.0.0.1`` (a free port),
a gateway with the ``echo`` agent behind the ``careful`` trust policy (state in a temporary
directory, or ``--state-dir``), and a console. Each line you type is sent as the current
user; the demo prints the trust decision (allow/deny, reason, tier) and the replies.
``careful`` denies strangers, so the demo sets up one admin (``demo:alice``), one
whitelisted user (``demo:bob``) and a stranger (``demo:carol``), and creates an invite code
that admits a stranger as a contact. ``/drop`` aborts the socket and shows the gateway
reconnecting; ``/idle`` shows scale-to-zero: ``going_idle``, a message buffered by the
connector while the gateway is away, the re-dial and the drain.

``--script FILE`` reads the lines from a file instead of the console and prints a
deterministic transcript (the port, the state directory and the invite code are shown as
placeholders; write ``$INVITE`` in a script to type the code).

Ctrl-C (SIGINT) or SIGTERM quits at once, mid-line or mid-step, with exit status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import signal
import sys
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Final

import attrs
import trio

from relay_runtime import _stop_signals as stop_signals
from relay_runtime._cli import UsageError
from relay_runtime.agents import echo
from relay_runtime.connector import Delivery
from relay_runtime.testing import GATEWAY_ID, Harness, Said, open_harness
from trust._records import TrustOpError

#: The demo's cast: user -> (what they are, how they are set up).
DEMO_USERS: Final = {
    "demo:alice": "admin",
    "demo:bob": "whitelisted",
    "demo:carol": "stranger",
}
DEFAULT_USER: Final = "demo:alice"
INVITE_PLACEHOLDER: Final = "$INVITE"
#: A wake URL the gateway registers so that suspend() is allowed; the reference connector
#: is given no poker, so nothing ever calls it.
_WAKE_URL: Final = "http://127.0.0.1:9/wake"
_STEP_TIMEOUT_S: Final = 15.0

HELP: Final = """\
commands:
  /as USER       speak as USER (demo:alice admin, demo:bob whitelisted, demo:carol stranger;
                 a bare name means demo:NAME; any platform:id works)
  /users         show the demo users and their trust levels
  /drop          abort the gateway's socket and watch it reconnect
  /idle [TEXT]   scale to zero: going_idle, TEXT buffered while the gateway is away,
                 re-dial, drain
  /help          this text
  /quit          leave (also end of input)
anything else is sent as a chat message, including /invite CODE and /trust ... commands"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="chat with the echo agent through a local connector and the careful policy",
        description=(
            "Start the reference connector on 127.0.0.1, a gateway with the echo agent and the "
            "careful trust policy, and a console chat that shows every trust decision and reply."
        ),
    )
    parser.add_argument(
        "--script",
        metavar="FILE",
        help="run the lines of FILE non-interactively and print the transcript",
    )
    parser.add_argument(
        "--state-dir", metavar="DIR", help="keep the demo's state here (default: a temp dir)"
    )
    parser.add_argument(
        "--as",
        dest="user",
        metavar="USER",
        default=DEFAULT_USER,
        help=f"the user you start as (default {DEFAULT_USER})",
    )
    parser.set_defaults(func=demo_command, default_log_level="warning", handles_signals=True)


def demo_command(args: argparse.Namespace) -> int:
    """``demo``: run the console (or the script); returns the exit status."""
    lines: list[str] | None = None
    if args.script is not None:
        try:
            lines = Path(args.script).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--script {args.script!r}: cannot read ({exc})") from None
    try:
        user = _user(args.user)
    except ValueError as exc:
        raise UsageError(f"--as: {exc}") from None
    demo = Demo(user=user, scripted=lines is not None, out=_stdout)
    if stop_signals.received() is not None:  # Ctrl-C while the demo was starting
        return 0
    try:
        trio.run(demo.run_until_interrupted, lines, args.state_dir)
    except KeyboardInterrupt:  # without the launcher's signal handling (in-process use)
        _stdout("bye")
    except BaseExceptionGroup as group:
        if group.subgroup(BrokenPipeError) is None or group.split(BrokenPipeError)[1]:
            raise
        # The reader of stdout went away (e.g. `| head`): nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _stdout(line: str) -> None:
    print(line, flush=True)


def _user(text: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError("expected a user, e.g. demo:carol or carol")
    if ":" not in text:
        text = f"demo:{text}"
    platform, _, user_id = text.partition(":")
    if not platform.strip() or not user_id.strip():
        raise ValueError(f"{text!r}: expected PLATFORM:USER_ID")
    return f"{platform.strip().lower()}:{user_id.strip()}"


@attrs.define(eq=False)
class Demo:
    """The console session: who is speaking, and how to show what happened."""

    user: str
    scripted: bool
    out: Callable[[str], None]
    invite_code: str = ""
    harness: Harness | None = None
    #: the scope of the input loop, once everything has started (Ctrl-C cancels it).
    _session: trio.CancelScope | None = None

    async def run_until_interrupted(self, lines: list[str] | None, state_dir: str | None) -> None:
        """:meth:`run`, ended at once (and quietly) by SIGINT/SIGTERM: Ctrl-C quits."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            if stop_signals.received() is not None:
                return
            async with trio.open_nursery() as nursery:

                async def quit_on_signal() -> None:
                    async for _ in signals:
                        if self._session is None:  # still starting: stop everything
                            nursery.cancel_scope.cancel()
                        else:  # end the session; the gateway then shuts down as on /quit
                            if not self.scripted:
                                sys.stdout.write("\n")  # end the prompt's line
                            self._session.cancel()
                        return

                nursery.start_soon(quit_on_signal)
                await self.run(lines, state_dir)
                nursery.cancel_scope.cancel()

    async def run(self, lines: list[str] | None, state_dir: str | None) -> None:
        """Start everything, then feed the script's or the console's lines."""
        with contextlib.ExitStack() as stack:
            if state_dir is None:
                state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-demo-"))
            await self._run(lines, state_dir)

    async def _run(self, lines: list[str] | None, state_dir: str) -> None:
        async with open_harness(
            echo,
            trust="careful",
            state_dir=state_dir,
            admins=[u for u, role in DEMO_USERS.items() if role == "admin"],
            users={u: "whitelist" for u, role in DEMO_USERS.items() if role == "whitelisted"},
            wake_url=_WAKE_URL,
            wake_confirmed=True,
            operator=_operator(),
        ) as harness:
            self.harness = harness
            self.invite_code = await harness.create_invite()
            self._banner(harness)
            source = _script_lines(lines) if lines is not None else self._console_lines()
            with trio.CancelScope() as self._session:
                async with contextlib.aclosing(source):
                    async for line in source:
                        if not await self.handle(line):
                            break
            self.out("bye")

    # ------------------------------------------------------------------ input

    async def _console_lines(self) -> AsyncGenerator[str, None]:
        stdin = _StdinLines(sys.stdin.fileno())
        while True:
            self._prompt()
            line = await stdin.readline()
            if line is None:  # end of input: finish the prompt's line
                sys.stdout.write("\n")
                return
            yield line

    def _prompt(self) -> None:
        sys.stdout.write(f"{self.user}> ")
        sys.stdout.flush()

    # ------------------------------------------------------------------ commands

    async def handle(self, line: str) -> bool:
        """Act on one input line; ``False`` ends the session."""
        text = line.strip()
        if not text or text.startswith("#"):
            return True
        if self.scripted:
            self.out(f"{self.user}> {text}")
        command, _, rest = text.partition(" ")
        rest = rest.strip()
        if command == "/quit":
            return False
        if command == "/help":
            self.out(HELP)
        elif command == "/as":
            await self._switch(rest)
        elif command == "/users":
            await self._users()
        elif command == "/drop":
            await self._drop()
        elif command == "/idle":
            await self._idle(rest or "are you awake?")
        else:
            await self._say(text)
        return True

    async def _switch(self, who: str) -> None:
        try:
            self.user = _user(who)
        except ValueError as exc:
            self.out(f"  usage: /as USER ({exc})")
            return
        self.out(f"  now speaking as {self.user} ({await self._level(self.user)})")

    async def _users(self) -> None:
        for user in DEMO_USERS:
            self.out(f"  {user}: {await self._level(user)}")

    async def _level(self, user: str) -> str:
        """The user's trust level as the store has it now (``admin`` added for admins)."""
        engine = self._harness().engine
        try:
            client_id = engine.ops.client_id(user)
        except TrustOpError:  # invalid for its platform: the sender is anonymous
            return "anonymous"
        record = await engine.store.get(client_id)
        if record.is_admin:  # the banner's word; an admin's stored level does not matter
            return "admin"
        level: str = record.effective_level
        return "whitelisted" if level == "whitelist" else level

    async def _say(self, text: str) -> None:
        typed = text.replace(INVITE_PLACEHOLDER, self.invite_code)
        with trio.fail_after(_STEP_TIMEOUT_S):
            said = await self._harness().say(typed, user=self.user)
        self._show(said)

    def _show(self, said: Said) -> None:
        decision = said.decision
        if decision is None:
            self.out("  trust: (not evaluated)")
        else:
            verdict = "allow" if decision.allow else "deny"
            self.out(f"  trust: {verdict} - {decision.reason} (tier {decision.tier})")
        for reply in said.replies:
            self.out(f"  reply: {reply}")
        if not said.replies:
            self.out("  (no reply)")

    async def _drop(self) -> None:
        harness = self._harness()
        stats = harness.gateway.supervisor.stats
        before = stats.handshakes
        self.out(f"  state: {harness.gateway.state}; aborting the socket (no close frame)")
        with trio.fail_after(_STEP_TIMEOUT_S):
            states = await _watch_states(harness, harness.drop)
        if not self.scripted:
            self.out(f"  states seen: {' -> '.join(states)}")
        code = stats.last_close[0] if stats.last_close else "?"
        self.out(f"  the gateway saw the socket end (close {code}) and re-dialed")
        self.out(
            f"  connection recovered: handshake #{stats.handshakes} "
            f"(was #{before}), state {harness.gateway.state}"
        )

    async def _idle(self, text: str) -> None:
        harness = self._harness()
        with trio.fail_after(_STEP_TIMEOUT_S):
            if self.scripted:
                await self._idle_steps(harness, text)
            else:
                states = await _watch_states(harness, lambda: self._idle_steps(harness, text))
                self.out(f"  states seen: {' -> '.join(states)}")

    async def _idle_steps(self, harness: Harness, text: str) -> None:
        connector, gateway = harness.connector, harness.gateway
        before = gateway.supervisor.stats.handshakes
        old = connector.current(GATEWAY_ID)
        check = await gateway.suspend()
        if not check:
            self.out(f"  cannot go idle: {check.reason}")
            return
        self.out("  going_idle sent; the connector acked and now buffers this gateway's mail")
        if old is not None:
            await connector.wait_for(lambda: not old.open)
            self.out(
                f"  socket closed {old.close_code} ({old.close_reason}); the gateway is dormant "
                "(re-dials every 1 s)"
            )

        def delivered(delivery: Delivery) -> None:
            where = "" if self.scripted else f" ({delivery.buffer_id})"
            self.out(f"  {self.user}: {text!r} -> {delivery.outcome} at the connector{where}")

        said = await harness.say(text, user=self.user, on_delivered=delivered)
        self.out(
            f"  gateway re-dialed (handshake #{gateway.supervisor.stats.handshakes}, "
            f"was #{before}); the connector replayed its buffer:"
        )
        self._show(said)
        await connector.wait_for(lambda: not connector.is_buffered_only(GATEWAY_ID))
        self.out("  buffer drained; the connector is back to live delivery")

    # ------------------------------------------------------------------ output

    def _banner(self, harness: Harness) -> None:
        port = "<port>" if self.scripted else str(harness.connector.port)
        state = "<state dir>" if self.scripted else str(harness.state_dir)
        code = INVITE_PLACEHOLDER if self.scripted else self.invite_code
        self.out("relay-runtime demo: the echo agent behind the careful trust policy")
        self.out(f"  connector: ws://127.0.0.1:{port} (reference connector, in this process)")
        self.out(f"  state dir: {state}")
        self.out("  users: " + ", ".join(f"{u} ({role})" for u, role in DEMO_USERS.items()))
        self.out(f"  invite code for a stranger (one use): {code}")
        self.out(f"  you are {self.user}; /help lists the commands")

    def _harness(self) -> Harness:
        assert self.harness is not None, "the demo is not running"
        return self.harness


def _operator() -> str:
    """``local:<OS user>``: the demo's own trust changes are audited as the trust CLI's are."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return "local:demo"


class _StdinLines:
    """Lines of a file descriptor, read so that a cancel (Ctrl-C) interrupts the wait.

    ``os.read`` runs in a worker thread that a cancel abandons; unlike a buffered
    ``sys.stdin.readline`` it holds no lock that could stall the interpreter's exit.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self._eof = False

    async def readline(self) -> str | None:
        """The next line without its newline; ``None`` at the end of input."""
        while b"\n" not in self._buffer and not self._eof:
            chunk = await trio.to_thread.run_sync(os.read, self._fd, 65536, abandon_on_cancel=True)
            self._buffer += chunk
            self._eof = not chunk
        if not self._buffer:
            return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace").rstrip("\r")


async def _script_lines(lines: list[str]) -> AsyncGenerator[str, None]:
    for line in lines:
        yield line


async def _watch_states(harness: Harness, action: Callable[[], Awaitable[None]]) -> list[str]:
    """Run ``action`` (a coroutine function) and collect the gateway states seen meanwhile."""
    supervisor = harness.gateway.supervisor
    seen = [harness.gateway.state]
    supervisor.on_state = seen.append
    try:
        await action()
    finally:
        supervisor.on_state = None
    return seen
