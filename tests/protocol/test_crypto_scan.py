"""R38: our only channel cryptography is protocol/_auth.py; no platform crypto anywhere.

A static scan of every module under protocol/, trust/, relay_runtime/ and scripts/.

Allow-list (documented here on purpose; extend it only with a reason):

* ``protocol/_auth.py`` may use ``hmac`` and ``hashlib`` freely: it is the channel
  authenticator (RC §5).
* Modules under ``trust/`` may use exactly ``hashlib.sha256`` (invite codes are stored as
  their SHA-256 digest, TR §6) and ``hmac.compare_digest`` (the constant-time confirmation of
  an invite code, TR §6). That is digesting at rest, not channel or platform crypto: anything
  keyed (``hmac.new``, ``hmac.digest``, ``hashlib.pbkdf2_hmac``...) or any other use of the
  module objects is a violation.
* ``protocol/_websocket.py`` may use exactly ``hashlib.sha1``: the WebSocket handshake's
  ``Sec-WebSocket-Accept`` is the SHA-1 of the request key and a fixed GUID (RFC 6455 section 4.2.2),
  a checksum of the upgrade, not channel or platform crypto.
* Everything else: no ``hmac``/``hashlib`` (or their C modules) at all.

Platform crypto (``nacl``, ``cryptography``, ``ed25519``, PyCryptodome, ...) is forbidden in
every module, including ``protocol/_auth.py``: verifying and decrypting platform traffic is the
connector's job (RC §1, A2 model).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("protocol", "trust", "relay_runtime", "scripts")

CHANNEL_CRYPTO = frozenset(
    {"hmac", "hashlib", "_hashlib", "_sha256", "_sha2", "_sha1", "_md5", "_sha3", "_blake2"}
)
PLATFORM_CRYPTO = frozenset(
    {
        "nacl",
        "libnacl",
        "pysodium",
        "cryptography",
        "ed25519",
        "pure25519",
        "curve25519",
        "Crypto",
        "Cryptodome",
        "ecdsa",
        "OpenSSL",
        "rsa",
        "jwt",
        "jose",
        "jwcrypto",
        "authlib",
    }
)
AUTH_MODULE = "protocol/_auth.py"
#: Per package prefix: module -> the attributes that package may use (see module docstring).
RESTRICTED_USE: dict[str, dict[str, frozenset[str]]] = {
    "trust/": {"hashlib": frozenset({"sha256"}), "hmac": frozenset({"compare_digest"})},
    "protocol/_websocket.py": {"hashlib": frozenset({"sha1"})},
}

_TEXT_IMPORT = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w.]*)", re.MULTILINE)


def _root(module: str) -> str:
    return module.split(".", 1)[0]


def _dynamic_import(node: ast.Call) -> str | None:
    """The module named by ``__import__("x")`` / ``importlib.import_module("x")``."""
    func = node.func
    named = (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    )
    if named and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        if isinstance(value, str):
            return value
    return None


def violations(rel_path: str, source: str) -> list[str]:
    """Every R38 violation in one module's source (empty when the module is clean)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        # A half-written module: fall back to a line scan of its import statements.
        return [
            f"{rel_path}: imports {name} (line scan)"
            for name in _TEXT_IMPORT.findall(source)
            if _root(name) in PLATFORM_CRYPTO
            or (_root(name) in CHANNEL_CRYPTO and rel_path != AUTH_MODULE)
        ]
    allowed_use = next(
        (uses for prefix, uses in RESTRICTED_USE.items() if rel_path.startswith(prefix)), None
    )
    found: list[str] = []
    aliases: dict[str, str] = {}  # local name bound to a channel-crypto module -> module

    def imported(module: str, line: int, names: list[ast.alias] | None) -> None:
        root = _root(module)
        if root in PLATFORM_CRYPTO:
            found.append(f"{rel_path}:{line}: platform crypto {module}")
            return
        if root not in CHANNEL_CRYPTO or rel_path == AUTH_MODULE:
            return
        uses = (allowed_use or {}).get(module)
        if uses is None:
            found.append(f"{rel_path}:{line}: imports {module} (only {AUTH_MODULE} may)")
        elif names is not None:
            found.extend(
                f"{rel_path}:{line}: from {module} import {alias.name} (allowed: {sorted(uses)})"
                for alias in names
                if alias.name not in uses
            )

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imported(alias.name, node.lineno, None)
                if alias.name in CHANNEL_CRYPTO:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported(node.module, node.lineno, node.names)
        elif isinstance(node, ast.Call) and (module := _dynamic_import(node)):
            imported(module, node.lineno, None)

    if allowed_use is not None and aliases:
        # Every use of an imported hmac/hashlib name must be an allowed attribute.
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Name) or node.id not in aliases:
                continue
            module = aliases[node.id]
            parent = parents.get(node)
            uses = allowed_use.get(module, frozenset())
            if not (isinstance(parent, ast.Attribute) and parent.attr in uses):
                what = f"{module}.{parent.attr}" if isinstance(parent, ast.Attribute) else module
                found.append(f"{rel_path}:{node.lineno}: uses {what} (allowed: {sorted(uses)})")
    return found


def _modules() -> Iterator[tuple[str, str]]:
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def test_R38_only_protocol_auth_does_channel_crypto() -> None:
    modules = dict(_modules())
    assert AUTH_MODULE in modules
    assert len(modules) > 10, "the scan found suspiciously few modules"
    found = [v for rel, source in modules.items() for v in violations(rel, source)]
    assert found == []


def test_R38_the_allow_list_is_not_stale() -> None:
    tree = ast.parse((ROOT / AUTH_MODULE).read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {"hmac", "hashlib"} <= names


# -- the scanner itself catches what it must ----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("relay_runtime/x.py", "import hmac\n"),
        ("relay_runtime/x.py", "import hashlib as h\n"),
        ("relay_runtime/x.py", "from hashlib import sha256\n"),
        ("protocol/_codec.py", "import _hashlib\n"),
        ("protocol/_urls.py", "x = __import__('hmac')\n"),
        ("relay_runtime/x.py", "import importlib\nm = importlib.import_module('hashlib')\n"),
        ("protocol/_auth.py", "from nacl.signing import VerifyKey\n"),
        ("relay_runtime/x.py", "import cryptography.hazmat.primitives\n"),
        ("trust/x.py", "from cryptography.hazmat.primitives.asymmetric import ed25519\n"),
        ("trust/x.py", "import ed25519\n"),
        ("scripts/x.py", "from Crypto.Cipher import AES\n"),
        ("trust/x.py", "import hmac\nsig = hmac.new(b'k', b'm', 'sha256')\n"),
        ("trust/x.py", "import hmac as h\nd = h.digest(b'k', b'm', 'sha256')\n"),
        ("trust/x.py", "import hashlib\nk = hashlib.pbkdf2_hmac('sha256', b'p', b's', 1)\n"),
        ("trust/x.py", "import hashlib\nf = hashlib\n"),
        ("trust/x.py", "from hmac import new\n"),
        ("trust/x.py", "from hashlib import md5\n"),
        ("relay_runtime/x.py", "import hmac\ndef (:\n"),  # unparsable: line scan
    ],
)
def test_R38_scanner_flags_forbidden_crypto(path: str, source: str) -> None:
    assert violations(path, source)


@pytest.mark.parametrize(
    ("path", "source"),
    [
        (
            "protocol/_auth.py",
            "import hashlib\nimport hmac\nhmac.new(b'k', b'm', hashlib.sha256)\n",
        ),
        ("trust/_invites.py", "import hashlib\nd = hashlib.sha256(b'c').hexdigest()\n"),
        ("trust/x.py", "import hmac\nok = hmac.compare_digest(b'a', b'b')\n"),
        ("trust/x.py", "from hmac import compare_digest\nfrom hashlib import sha256\n"),
        ("relay_runtime/x.py", "import ssl\nimport secrets\nfrom protocol._auth import sign\n"),
    ],
)
def test_R38_scanner_allows_documented_uses(path: str, source: str) -> None:
    assert violations(path, source) == []
