"""Every contract citation in the repository resolves to the contract in ``docs/contract/``.

Code and docs cite the contract in short form: ``RC §6.2`` (docs/contract/relay.md),
``TR §5`` (docs/contract/trust.md), ``AR §3`` (docs/contract/architecture.md), and requirement
ids such as ``R52``, ``T67`` or ``C24`` (the checklists at the end of RC and TR). These tests
scan the repository's ``.py`` and ``.md`` files and fail, naming file and line, on a section
that is not a heading of the cited document, on an unqualified ``§n`` outside the places where
its document is implied, on an id no checklist defines, and on any reference to the specs that used to live
outside the repository.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "contract"
DOCUMENTS = {
    "RC": CONTRACT / "relay.md",
    "TR": CONTRACT / "trust.md",
    "AR": CONTRACT / "architecture.md",
}
# Where a bare ``§n`` has an implied document: the trust package and its tests cite TR, and
# each contract document cites itself.
IMPLIED = (
    ("trust/", "TR"),
    ("tests/trust/", "TR"),
    ("docs/contract/relay.md", "RC"),
    ("docs/contract/trust.md", "TR"),
    ("docs/contract/architecture.md", "AR"),
)
SKIP_DIRS = {"__pycache__", "node_modules", "build", "dist", "venv"}

_SECTION = r"§\s*\d+(?:\.\d+)*"
# One citation group: "RC §6.2", "TR §6, §8", "RC §7.2–§7.4", "TR §5/§7", "RC §6 and §8",
# "RC §6.1 rows, §6.4 ladder, §6.5 4401 table" (up to three words after each section).
_GROUP = re.compile(
    rf"\b(RC|TR|AR)\s+({_SECTION}"
    rf"(?:(?:\s+[^\s§,;/()]+){{0,3}}\s*(?:,|/|-|–|and|or)\s*{_SECTION})*)",
)
_NUMBER = re.compile(r"§\s*(\d+(?:\.\d+)*)")
_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
_ID_DEFINED = re.compile(r"^- ([RTC][1-9]\d?) ", re.MULTILINE)
_ID_CITED = re.compile(r"\b([RTC][1-9]\d?)\b")
_OUTSIDE = "shared" + "/"  # spelled in two parts so this file does not match itself


def _files(suffixes: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(path relative to the repository, text) of every file with one of ``suffixes``."""
    for directory, subdirs, names in os.walk(ROOT):
        subdirs[:] = sorted(
            d
            for d in subdirs
            if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(names):
            if name.endswith(suffixes):
                path = Path(directory, name)
                yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _sections(document: Path) -> set[str]:
    return set(_HEADING.findall(document.read_text(encoding="utf-8")))


def _implied(path: str) -> str | None:
    for prefix, document in IMPLIED:
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return document
    return None


def test_the_contract_documents_have_numbered_sections() -> None:
    sections = {name: _sections(path) for name, path in DOCUMENTS.items()}
    assert {"1", "3.1", "6.2", "6.5", "7.4", "11"} <= sections["RC"]
    assert {"0", "1", "4.1", "6", "8", "11"} <= sections["TR"]
    assert {"1", "2", "3", "4", "5", "6"} <= sections["AR"]


def test_every_section_citation_resolves_to_a_heading() -> None:
    sections = {name: _sections(path) for name, path in DOCUMENTS.items()}
    problems: list[str] = []
    for path, text in _files((".py", ".md")):
        if "§" not in text:
            continue
        qualified: list[tuple[int, int]] = []
        for group in _GROUP.finditer(text):
            qualified.append(group.span())
            document = group.group(1)
            problems.extend(
                f"{path}:{_line(text, group.start())}: {document} §{number} is not a "
                f"heading of {DOCUMENTS[document].relative_to(ROOT)}"
                for number in _NUMBER.findall(group.group(2))
                if number not in sections[document]
            )
        implied = _implied(path)
        for bare in _NUMBER.finditer(text):
            if any(start <= bare.start() < end for start, end in qualified):
                continue
            number = bare.group(1)
            if implied is None:
                problems.append(
                    f"{path}:{_line(text, bare.start())}: unqualified §{number}; "
                    "write RC §, TR § or AR §"
                )
            elif number not in sections[implied]:
                problems.append(
                    f"{path}:{_line(text, bare.start())}: §{number} (read as {implied}) is not "
                    f"a heading of {DOCUMENTS[implied].relative_to(ROOT)}"
                )
    assert not problems, "contract citations that do not resolve:\n" + "\n".join(problems)


def test_every_requirement_id_is_defined_in_a_checklist() -> None:
    defined: set[str] = set()
    for document in (DOCUMENTS["RC"], DOCUMENTS["TR"]):
        defined |= set(_ID_DEFINED.findall(document.read_text(encoding="utf-8")))
    assert {"R1", "R89", "T1", "T71", "C1", "C28"} <= defined
    problems = [
        f"{path}:{_line(text, cited.start())}: {cited.group(1)} is in no checklist of "
        "docs/contract/relay.md or docs/contract/trust.md"
        for path, text in _files((".py", ".md"))
        for cited in _ID_CITED.finditer(text)
        if cited.group(1) not in defined
    ]
    assert not problems, "requirement ids that do not resolve:\n" + "\n".join(problems)


def test_nothing_refers_to_files_outside_the_repository() -> None:
    problems = [
        f"{path}:{_line(text, match.start())}: refers to {_OUTSIDE}"
        for path, text in _files((".py", ".md", ".toml"))
        for match in re.finditer(re.escape(_OUTSIDE), text)
    ]
    assert not problems, "references to the old shared specs:\n" + "\n".join(problems)
