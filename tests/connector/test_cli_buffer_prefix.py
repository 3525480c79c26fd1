"""``relay-runtime connector --buffer-prefix``: the bufferId run prefix from the command line."""

from __future__ import annotations

import subprocess
import sys

from relay_runtime._cli import build_parser
from relay_runtime._cli.connector import build_connector


def test_buffer_prefix_flag_reaches_the_connector() -> None:
    args = build_parser().parse_args(["connector", "--buffer-prefix", "run-7.a_b~c"])
    connector = build_connector(args, {"gw": ["s"]})
    assert connector.buffer_prefix == "run-7.a_b~c"


def test_without_the_flag_each_connector_gets_a_fresh_random_prefix() -> None:
    args = build_parser().parse_args(["connector"])
    first = build_connector(args, {"gw": ["s"]}).buffer_prefix
    second = build_connector(args, {"gw": ["s"]}).buffer_prefix
    assert len(first) == 8
    assert first != second


def test_a_bad_buffer_prefix_is_a_usage_error_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "relay_runtime", "connector", "--allow-unauthenticated",
         "--buffer-prefix", "has space"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "buffer_prefix must be 1-64 of A-Z a-z 0-9 . _ ~ -, not 'has space'" in done.stderr
