"""``relay-runtime demo`` (being written)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo", help="chat with the echo agent through a local connector"
    )
    parser.set_defaults(func=lambda args: 1)
