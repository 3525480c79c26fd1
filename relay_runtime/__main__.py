"""``python -m relay_runtime``: the launcher."""

from __future__ import annotations

from relay_runtime.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
