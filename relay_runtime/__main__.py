"""``python -m relay_runtime`` and the ``relay-runtime`` script: the launcher.

Stop signals are taken over before anything else is imported (see
:mod:`relay_runtime._stop_signals`); only then is the command line loaded.
"""

from __future__ import annotations

from relay_runtime import _stop_signals as stop_signals


def main() -> int:
    """Run the command line; returns the exit status."""
    stop_signals.install()
    from relay_runtime._cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
