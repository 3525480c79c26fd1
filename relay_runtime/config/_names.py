"""Unknown names: a typo in our variables or config keys is refused with the closest name."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Final

from relay_runtime.config._values import ENV_PREFIX, ConfigError
from relay_runtime.config._vars import _VARS

# --------------------------------------------------------------------------- unknown names
#
# A typo must not be silently ignored. The GATEWAY_RELAY_ namespace, relay.env and the
# gateway.relay_* / gateway.idp.* keys are ours alone: any unknown name there is an error.
# RELAY_* variables are shared with the agent (RELAY_AGENT_*), the trust engine
# (RELAY_TRUST_*), the reference connector (RELAY_CONNECTOR_*) and the test and bench
# harnesses, so there only a name that is not one of theirs and looks like one of ours
# (a near miss of RELAY_TRUST / RELAY_STATE_DIR, or GATEWAY_RELAY_<X> without its prefix) is
# refused. Other top-level and gateway keys of the file belong to the host application.

#: RELAY_* families read by other parts of the project; never refused here.
OTHER_RELAY_PREFIXES: Final = (
    "RELAY_AGENT_",
    "RELAY_TRUST_",
    "RELAY_CONNECTOR_",
    "RELAY_TEST_",
    "RELAY_CHAOS_",
    "RELAY_FUZZ_",
    "RELAY_BENCH_",
)
#: Single RELAY_* names read elsewhere: the tests' PostgreSQL switch, and
#: ``<PLATFORM>_ALLOW_BOTS`` for a platform named ``relay``.
OTHER_RELAY_NAMES: Final = frozenset({"RELAY_REQUIRE_PG", "RELAY_ALLOW_BOTS"})
_NEAR_MISS: Final = 0.85


def _closest(name: str, known: list[str], cutoff: float = 0.6) -> str | None:
    found = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return found[0] if found else None


def _closest_prefixed(name: str, known: list[str]) -> str | None:
    """The closest ``GATEWAY_RELAY_*`` name, comparing what follows the shared prefix."""
    tails = [n[len(ENV_PREFIX) :] for n in known if n.startswith(ENV_PREFIX)]
    near = _closest(name[len(ENV_PREFIX) :], tails)
    return None if near is None else ENV_PREFIX + near


def _unknown(label: str, suggestion: str | None, what: str = "setting") -> ConfigError:
    hint = f"; did you mean {suggestion}?" if suggestion else " (see docs/configuration.md)"
    return ConfigError(label, f"is not a known {what}{hint}")


def _our_env_names() -> list[str]:
    return sorted(var.env for var in _VARS if var.env is not None)


def _check_env_names(env: Mapping[str, str]) -> None:
    """Refuse an environment variable that is ours by name or looks like a typo of one."""
    ours = _our_env_names()
    known = set(ours)
    unprefixed = {f"RELAY_{n[len(ENV_PREFIX) :]}": n for n in ours if n.startswith(ENV_PREFIX)}
    relay_names = sorted({n for n in ours if not n.startswith(ENV_PREFIX)} | set(unprefixed))
    for name in sorted(env):
        if name in known:
            continue
        if name.startswith(ENV_PREFIX):
            raise _unknown(name, _closest_prefixed(name, ours), "GATEWAY_RELAY_* variable")
        if not name.startswith("RELAY_") or name in OTHER_RELAY_NAMES:
            continue
        if name.startswith(OTHER_RELAY_PREFIXES):
            continue
        if name in unprefixed:
            raise _unknown(name, unprefixed[name], "variable")
        near = _closest(name, relay_names, _NEAR_MISS)
        if near is not None:
            raise _unknown(name, unprefixed.get(near, near), "variable")


def _check_env_file_names(dotenv: Mapping[str, str], label: str) -> None:
    ours = _our_env_names()
    for name in sorted(dotenv):
        if name not in ours:
            near = _closest_prefixed(name, ours) if name.startswith(ENV_PREFIX) else None
            near = near or _closest(name, ours)
            raise _unknown(f"{name} in {label}", near, "relay.env setting")


def _file_keys() -> dict[tuple[str, ...], list[str]]:
    """Known keys by parent path: ``("gateway",)`` -> ``["relay_url", ...]``, etc."""
    out: dict[tuple[str, ...], list[str]] = {}
    for var in _VARS:
        for key in var.keys:
            for depth in range(1, len(key)):
                out.setdefault(key[:depth], []).append(key[depth])
    out[("gateway",)].append("platforms")  # per-platform relevance blocks (control.py)
    return {parent: sorted(set(keys)) for parent, keys in out.items()}


def _check_file_keys(data: Mapping[str, Any], file_label: str) -> None:
    """Refuse unknown keys in our parts of the config file, naming the closest known one."""
    if not data:
        return
    known = _file_keys()

    def refuse(path: tuple[str, ...], suggestion: str | None) -> ConfigError:
        return _unknown(f"{'.'.join(path)} in {file_label}", suggestion, "config key")

    relay_keys = known[("gateway",)]
    for key in data:
        text = str(key)
        if text in ("gateway", "platforms"):
            continue
        if text.startswith("relay_"):
            near = _closest(text, relay_keys)
            raise refuse((text,), f"gateway.{near}" if near else None)
        near = _closest(text, ["gateway", "platforms"], 0.8)
        if near is not None:
            raise refuse((text,), near)

    def check_block(path: tuple[str, ...], *, strict: bool, prefix: str = "relay_") -> None:
        block = _node(data, path)
        if block is None:
            return
        if not isinstance(block, Mapping):
            raise ConfigError(f"{'.'.join(path)} in {file_label}", "must be a mapping")
        names = known.get(path, [])
        for key in block:
            text = str(key)
            if text in names:
                continue
            near = _closest(text, names, 0.6 if strict or text.startswith(prefix) else 0.85)
            if strict or text.startswith(prefix) or near is not None:
                raise refuse((*path, text), ".".join((*path, near)) if near else None)

    check_block(("gateway",), strict=False)
    check_block(("gateway", "idp"), strict=True)
    check_block(("platforms",), strict=False, prefix="\0")
    check_block(("platforms", "relay"), strict=False)
    check_block(("platforms", "relay", "extra"), strict=False)


def _node(data: Mapping[str, Any], path: tuple[str, ...]) -> object:
    node: object = data
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node
