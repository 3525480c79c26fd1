"""The ``relay-runtime`` command line.

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func`` (``argparse.Namespace -> int`` exit status). Exit status:
0 clean, 1 runtime failure, 2 bad configuration or usage, 3 relay disabled by the connector.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that provide subcommands, in the order ``--help`` lists them.
_COMMAND_MODULES: tuple[str, ...] = ()

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DISABLED = 3


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors, which is our usage status too."""


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every registered subcommand."""
    parser = _Parser(
        prog="relay-runtime",
        description="Run a chat agent behind a relay connector.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    status: int = func(args)
    return status
