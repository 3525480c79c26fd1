"""Every contract citation in the repository resolves to the contract in ``docs/contract/``.

Code and docs cite the contract in short form: ``RC §6.2`` (docs/contract/relay.md),
``TR §5`` (docs/contract/trust.md), ``AR §3`` (docs/contract/architecture.md), and requirement
ids such as ``R52``, ``T67`` or ``C24`` (the checklists at the end of RC and TR). These tests
scan the repository's ``.py`` and ``.md`` files and fail, naming file and line, on a section
that is not a heading of the cited document, on an unqualified ``§n`` outside the places where
its document is implied, on an id no checklist defines, and on any reference to the specs that used
to live
outside the repository.
"""

from __future__ import annotations

import ast
import builtins
import functools
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs
import pytest

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


# ---- docs/internals.md: every file and name it cites exists in the tree ----------------------

INTERNALS = ROOT / "docs" / "internals.md"
SOURCE_DIRS = ("protocol", "relay_runtime", "trust", "tests", "scripts")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_DATA_FILE = re.compile(r"\.(db|lock|json|toml)$")
_STEP = re.compile(r"^\d+\.\s", re.MULTILINE)
# Bases whose members a name may use without the tree defining them.
_PLAIN_BASES = {"object", "Protocol", "Generic", "Exception", "Enum", "enum.Enum"}


@attrs.frozen
class _Class:
    members: frozenset[str]
    bases: tuple[str, ...]


@attrs.frozen
class _Module:
    path: str
    names: frozenset[str]
    classes: Mapping[str, _Class]
    parameters: frozenset[str]
    #: Identifier-like words of its string literals (docstrings left out): wire and SQL names.
    words: frozenset[str]


def _class_info(node: ast.ClassDef) -> _Class:
    members: set[str] = set()
    for item in ast.walk(node):
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            members.add(item.name)
        elif isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store):
            members.add(item.attr)  # self.x = ...
    for item in node.body:
        targets = item.targets if isinstance(item, ast.Assign) else []
        if isinstance(item, ast.AnnAssign):
            targets = [item.target]
        members.update(t.id for t in targets if isinstance(t, ast.Name))
    return _Class(frozenset(members), tuple(ast.unparse(base) for base in node.bases))


def _module_info(path: str, tree: ast.Module) -> _Module:
    names: set[str] = set()
    classes: dict[str, _Class] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = _class_info(node)
            names.add(node.name)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    parameters = {
        arg.arg
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)
    }
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    words = {
        word
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docstrings
        for word in re.findall(r"[A-Za-z_]\w*", node.value)
    }
    return _Module(path, frozenset(names), classes, frozenset(parameters), frozenset(words))


@functools.cache
def _tree() -> dict[str, _Module]:
    """Every module of the tree by dotted name (``relay_runtime._state``, ``tests.conftest``)."""
    modules: dict[str, _Module] = {}
    for top in SOURCE_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            dotted = relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            modules[dotted] = _module_info(relative, ast.parse(path.read_text(encoding="utf-8")))
    return modules


def _classes_named(name: str) -> list[_Class]:
    return [m.classes[name] for m in _tree().values() if name in m.classes]


def _has_member(cls: _Class, member: str, seen: frozenset[str] = frozenset()) -> bool:
    """``member`` is defined by ``cls`` or a base; an outside base (trio's, attrs') counts."""
    if member in cls.members:
        return True
    for base in cls.bases:
        short = base.split("[")[0].rsplit(".", 1)[-1]
        if short in seen:
            continue
        found = _classes_named(short)
        if not found:
            if base not in _PLAIN_BASES and short not in _PLAIN_BASES:
                return True  # a base from outside the tree may define it
            continue
        if any(_has_member(b, member, seen | {short}) for b in found):
            return True
    return False


def _resolve_in(module: _Module, parts: list[str]) -> bool:
    """``parts`` (``Class.member`` or ``function``) is defined in ``module``."""
    if parts[0] not in module.names:
        return False
    if len(parts) == 1:
        return True
    cls = module.classes.get(parts[0])
    if cls is None:  # an imported class: look it up by name
        found = _classes_named(parts[0])
        return any(_has_member(c, parts[1], frozenset({parts[0]})) for c in found)
    return _has_member(cls, parts[1], frozenset({parts[0]}))


@functools.cache
def _all_members() -> frozenset[str]:
    """Every name the tree defines anywhere (parameters included), and the builtins."""
    names: set[str] = set(dir(builtins))
    for module in _tree().values():
        names |= module.names | module.parameters
        for cls in module.classes.values():
            names |= cls.members
    return frozenset(names)


def _name_problem(token: str) -> str | None:
    """Why the code span ``token`` names nothing in the tree, or ``None`` (also: not a name)."""
    text = token.removeprefix("await ").removeprefix("async ")
    match = _DOTTED.match(text)
    if match is None:
        return None
    name = match.group(0)
    called = text[match.end() : match.end() + 1] == "("
    if text[match.end() : match.end() + 3] == ".py" or "/" in text or _DATA_FILE.search(name):
        return None  # a path: checked by _path_problem
    parts = name.split(".")
    modules = _tree()
    in_module: str | None = None
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        # A module by its dotted name, or by its last part (``outbound.retry_for``).
        found = [
            m for dotted, m in modules.items() if dotted == prefix or dotted.endswith("." + prefix)
        ]
        if found and cut < len(parts):
            rest = parts[cut:]
            if any(_resolve_in(m, rest[:2]) for m in found):
                return None
            in_module = f"{name}: {'.'.join(rest)} is not defined in {found[0].path}"
            break
        if found:
            return None
    if len(parts) > 1:
        classes = _classes_named(parts[0])
        if classes:
            if any(_has_member(c, parts[1], frozenset({parts[0]})) for c in classes):
                return None
            return f"{name}: class {parts[0]} has no {parts[1]}"
        # An instance (``source.platform``, ``supervisor.outbound``): its attribute must
        # exist somewhere.
        if parts[-1] in _all_members():
            return None
        return in_module or f"{name}: no {parts[-1]} anywhere"
    if called or name[0].isupper():
        return None if name in _all_members() else f"{name}: defined nowhere in the tree"
    if "_" in name.strip("_"):  # a code word: a name, else a wire or SQL name in a string
        known = name in _all_members() or any(name in m.words for m in _tree().values())
        return None if known else f"{name}: neither a name nor a string of the tree"
    return None  # a plain word: a state, a value


def _path_problem(token: str) -> str | None:
    if not re.fullmatch(r"[\w./-]+\.(py|md)", token):
        return None
    if (ROOT / token).is_file() or any(m.path.endswith("/" + token) for m in _tree().values()):
        return None
    return f"{token}: no such file"


def _internals() -> str:
    return INTERNALS.read_text(encoding="utf-8")


def _outside_code_blocks(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def test_every_name_internals_cites_exists() -> None:
    text = _outside_code_blocks(_internals())
    problems = [
        problem
        for span in _CODE_SPAN.finditer(text)
        if (problem := _path_problem(span.group(1)) or _name_problem(span.group(1)))
    ]
    assert not problems, "docs/internals.md cites what the tree does not have:\n" + "\n".join(
        problems
    )


def _map_entries() -> list[tuple[str, str]]:
    """(directory, entry) for each file or folder the module map lists."""
    block = re.search(r"## Module map\n+```\n(.*?)```", _internals(), re.DOTALL)
    assert block is not None, "docs/internals.md has no module map"
    entries: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    for line in block.group(1).splitlines():
        indent = len(line) - len(line.lstrip())
        head = re.match(r"\s*((?:[\w./]+\.py|[\w]+/)(?:,\s*[\w./]+\.py)*)", line)
        if head is None or (stack and indent > stack[-1][0] + 2 and not head.group(1)):
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        directory = "".join(d for _, d in stack)
        entries.extend((directory, entry) for entry in re.split(r",\s*", head.group(1)))
        if head.group(1).endswith("/"):
            stack.append((indent, head.group(1)))
    return entries


def test_the_module_map_lists_every_module_and_nothing_else() -> None:
    listed = {directory + entry for directory, entry in _map_entries()}
    missing_files = sorted(p for p in listed if not (ROOT / p).exists())
    assert not missing_files, f"the module map lists what does not exist: {missing_files}"
    unlisted = sorted(
        path.relative_to(ROOT).as_posix()
        for package in ("protocol", "trust", "relay_runtime", "relay_runtime/state")
        for path in (ROOT / package).glob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
        and path.relative_to(ROOT).as_posix() not in listed
    )
    assert not unlisted, f"modules the module map does not list: {unlisted}"


def _walk(direction: str) -> list[str]:
    """The steps of the walk's ``direction`` (``In``, ``Out``), one text each."""
    section = re.search(
        rf"^### {direction}\b.*?\n(.*?)(?=^#|\Z)", _internals(), re.DOTALL | re.MULTILINE
    )
    assert section is not None, f"docs/internals.md has no '### {direction}' walk"
    body = section.group(1)
    starts = [m.start() for m in _STEP.finditer(body)]
    steps = [body[a:b] for a, b in zip(starts, [*starts[1:], len(body)], strict=True)]
    # The list ends at the first paragraph that is not a step.
    return [step.split("\n\n")[0] for step in steps]


@pytest.mark.parametrize("direction", ["In", "Out"])
def test_each_walk_step_names_a_file_and_what_it_defines(direction: str) -> None:
    """A step starts with its file; its first name is defined in that file; no file is
    entered twice in one direction."""
    steps = _walk(direction)
    assert len(steps) >= 4
    files: list[str] = []
    problems: list[str] = []
    for step in steps:
        spans = _CODE_SPAN.findall(step)
        path = spans[0]
        files.append(path)
        if not (ROOT / path).is_file():
            problems.append(f"{path}: no such file")
            continue
        module = next(m for m in _tree().values() if m.path == path)
        first = _DOTTED.match(spans[1].removeprefix("await "))
        assert first is not None, step
        if not _resolve_in(module, first.group(0).split(".")[:2]):
            problems.append(f"{path}: does not define {first.group(0)}")
    assert not problems, "\n".join(problems)
    twice = sorted({f for f in files if files.count(f) > 1})
    assert not twice, f"the {direction} walk enters {twice} twice"
