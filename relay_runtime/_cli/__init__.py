"""The ``relay-runtime`` command line (``python -m relay_runtime``).

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func`` (``argparse.Namespace -> int`` exit status). The global options
``--log-format`` and ``--log-level`` come before the subcommand and configure
:mod:`relay_runtime._logs` for every command.

Exit status (AR §4): 0 clean (including a SIGINT/SIGTERM drain), 1 anything else,
2 bad configuration or usage, 3 relay disabled by the connector, 130 Ctrl-C in a command
that does not drain. Every error is one ``relay-runtime: error: <message>`` line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Final

from relay_runtime import _stop_signals as stop_signals
from relay_runtime._errors import RelayDisabled, leaves
from relay_runtime._logs import LOG_FORMATS, LOG_LEVELS, configure_logging
from relay_runtime.config import ConfigError

__all__ = [
    "EXIT_DISABLED",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "exit_status_for",
    "main",
    "missing_extra",
    "print_error",
    "print_warning",
]

# Modules that provide subcommands, in the order ``--help`` lists them, with the commands
# each registers. ``run`` and ``demo`` are always there; the others are registered when their
# module is installed and imports. Only the chosen command's module is imported (startup
# time); ``--help`` and unknown commands import them all.
COMMAND_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("relay_runtime._cli.run", ("run",)),
    ("relay_runtime._cli.demo", ("demo",)),
    ("relay_runtime._cli.connector", ("connector",)),
    ("relay_runtime._cli.control", ("enroll", "provision", "policy")),
    ("trust._cli", ("trust",)),
)
_REQUIRED_MODULES: frozenset[str] = frozenset({"relay_runtime._cli.run", "relay_runtime._cli.demo"})

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DISABLED = 3
#: Interrupted by Ctrl-C in a command that does not drain (128 + SIGINT, as shells do).
EXIT_INTERRUPTED = 130

log = logging.getLogger("relay_runtime.cli")

_EPILOG = """\
examples:
  relay-runtime demo
      chat with the echo agent through a local connector and the careful trust policy
  relay-runtime demo --script docs/demo.script
      run a scripted conversation and print the transcript
  relay-runtime run --relay-url wss://connector.example --trust careful
      run a gateway (credentials from GATEWAY_RELAY_ID / GATEWAY_RELAY_SECRET)
  relay-runtime run --agent mypkg.bot:agent --config config.yaml --state-dir /var/lib/relay
      run your own agent (any async def agent(turn) -> str | None)
  relay-runtime --log-format json --log-level debug run --relay-url ws://127.0.0.1:8080

exit status: 0 clean shutdown (also after SIGINT/SIGTERM), 1 failure, 2 bad configuration
or usage, 3 relay disabled (credentials revoked, or refused with --exit-on-refused),
130 interrupted (Ctrl-C) in a command other than run and demo
"""


class UsageError(Exception):
    """A command-line or configuration problem found by a subcommand (exit status 2).

    The message names the option, variable or file at fault.
    """


def _usage_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "bad configuration or usage" (imported only when needed)."""
    from trust._policy import PolicyError, TrustConfigError

    return (ConfigError, UsageError, PolicyError, TrustConfigError)


def exit_status_for(exc: BaseException) -> int:
    """The exit status an exception (or exception group) escaping a command maps to.

    Revocation wins over a configuration error, which wins over anything else.
    """
    carried = leaves(exc)
    if any(isinstance(leaf, RelayDisabled) for leaf in carried):
        return EXIT_DISABLED
    if any(isinstance(leaf, _usage_errors()) for leaf in carried):
        return EXIT_USAGE
    return EXIT_FAILURE


#: Optional dependencies by top-level module: (what needs it, the extra that installs it).
OPTIONAL_EXTRAS: Final = {"psycopg": ("PostgreSQL support", "postgres")}


def missing_extra(exc: BaseException) -> str | None:
    """The line for a missing optional dependency, naming the extra to install."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    known = OPTIONAL_EXTRAS.get(exc.name.partition(".")[0])
    if known is None:
        return None
    what, extra = known
    return f"{what} needs the {extra} extra: pip install 'relay-runtime[{extra}]'"


def _describe(exc: BaseException) -> str:
    carried = [leaf for leaf in leaves(exc) if not _is_cancelled(leaf)] or leaves(exc)
    kinds: tuple[type[BaseException], ...] = (RelayDisabled, *_usage_errors())
    for kind in kinds:
        for leaf in carried:
            if isinstance(leaf, kind):
                return str(leaf)
    for leaf in carried:
        if (line := missing_extra(leaf)) is not None:
            return line
    described = "; ".join(_one_line(leaf) for leaf in carried)
    return f"{described} (--log-level debug shows where)"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename!r}" if exc.filename is not None else ""
        return f"{exc.strerror}{where}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_cancelled(exc: BaseException) -> bool:
    return type(exc).__name__ == "Cancelled" and type(exc).__module__.startswith("trio")


def _modules_for(command: str | None, registry: Sequence[tuple[str, tuple[str, ...]]]) -> list[str]:
    """The modules to import for ``command`` (all of them when it is not a known one)."""
    for name, commands in registry:
        if command in commands:
            return [name]
    return [name for name, _ in registry]


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The first positional word of ``argv``, skipping the global options and their values."""
    words = iter(argv)
    for word in words:
        if word in ("--log-format", "--log-level"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], modules: Sequence[str]
) -> None:
    for name in modules:
        if name in _REQUIRED_MODULES:
            importlib.import_module(name).register(subparsers)
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not installed: the command simply does not exist
            _unavailable(name, exc)
            continue
        except Exception as exc:  # a broken optional module must not take the CLI down
            _unavailable(name, exc)
            continue
        module.register(subparsers)


def _unavailable(name: str, exc: BaseException) -> None:
    print(
        f"relay-runtime: warning: commands of {name} are unavailable ({type(exc).__name__}: {exc})",
        file=sys.stderr,
    )


def build_parser(
    command: str | None = None,
    *,
    command_modules: Sequence[tuple[str, tuple[str, ...]]] = COMMAND_MODULES,
) -> argparse.ArgumentParser:
    """The parser with the global options and the subcommands.

    With ``command`` only the module providing it is imported (the parser then knows that
    command alone); without, every registered subcommand is there. ``command_modules`` is
    the registry (module name, the commands it registers); a module that is not installed is
    left out, a broken one is left out with a warning.
    """
    parser = argparse.ArgumentParser(
        prog="relay-runtime",
        description="Run a chat agent behind a relay connector.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="kv",
        help="log line format on stderr: key=value (default) or one JSON object per line",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.lower,
        default=None,
        help="lowest level logged (default: info; warning for demo)",
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", help="what to do (COMMAND --help for more)"
    )
    _register(subparsers, _modules_for(command, command_modules))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status.

    Whatever a command raises ends as one ``relay-runtime: error: <message>`` line on
    stderr (the traceback is logged at DEBUG), never a traceback: exception groups are
    unwrapped, a missing optional dependency names the extra that provides it, Ctrl-C
    exits 130.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen_command(words))
    args = parser.parse_args(words)
    func = getattr(args, "func", None)
    if not getattr(args, "handles_signals", False):
        stop_signals.restore_defaults()  # only run and demo take SIGINT/SIGTERM over
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    level = args.log_level or getattr(args, "default_log_level", "info")
    configure_logging(args.log_format, level)
    try:
        status: int = func(args)
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves(exc)):
            return EXIT_INTERRUPTED
        status = exit_status_for(exc)
        if status == EXIT_FAILURE:
            log.debug("relay-runtime %s failed", args.command, exc_info=exc)
        print_error(_describe(exc))
    return status


def print_error(message: str) -> None:
    """The one line every command prints for an error: ``relay-runtime: error: <message>``."""
    print(f"relay-runtime: error: {message}", file=sys.stderr)


def print_warning(message: str) -> None:
    """``relay-runtime: warning: <message>`` on stderr."""
    print(f"relay-runtime: warning: {message}", file=sys.stderr)
