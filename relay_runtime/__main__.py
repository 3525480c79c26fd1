"""``python -m relay_runtime`` and the ``relay-runtime`` script: the launcher.

Stop signals are taken over before anything else is imported (see
:mod:`relay_runtime._stop_signals`); only then is the command line loaded, with the garbage
collector paused and what it imported frozen.
"""

from __future__ import annotations

from relay_runtime import _stop_signals as stop_signals


def main() -> int:
    """Run the command line; returns the exit status."""
    stop_signals.install()
    import gc

    # What importing the command line allocates (modules, classes, functions) lives as long
    # as the process: collections meanwhile find nothing, and every later full one would
    # walk it again. So none runs during the import, and the result is frozen out of the
    # collector's way (the run command freezes the rest of its start-up heap once READY):
    # ~7 % of the instructions from process start to the run command's parser (valgrind).
    gc.disable()
    from relay_runtime._cli import main as cli_main

    gc.freeze()
    gc.enable()
    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
