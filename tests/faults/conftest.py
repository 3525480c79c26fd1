"""The fault suite's summary: one line per scenario in the terminal report, pass or fail."""

from __future__ import annotations

from typing import Any

#: ``faults: <scenario> messages=... answered=... duplicates=... lost=... reruns=...`` lines.
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.section("fault suite counts")
        for line in SUMMARY:
            terminalreporter.write_line(line)
