"""The control-command tests: a clean environment (autouse) and the argument parser."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from relay_runtime._cli.control import register


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No relay settings from the outer environment; the state dir under tmp_path."""
    for name in list(os.environ):
        if name.startswith(("GATEWAY_RELAY_", "RELAY_")) or name.endswith("_ALLOW_BOTS"):
            monkeypatch.delenv(name)
    state = tmp_path / "state"
    monkeypatch.setenv("RELAY_STATE_DIR", str(state))
    return state


def parse(*argv: str) -> argparse.Namespace:
    """Parse a control command line as ``relay-runtime`` would."""
    parser = argparse.ArgumentParser(prog="relay-runtime")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(list(argv))
