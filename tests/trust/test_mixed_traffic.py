"""The mixed-traffic simulation of scripts/bench_trust.py (issue "trust engine" acceptance)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_trust.py"
    spec = importlib.util.spec_from_file_location("bench_trust_mixed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_careful_needs_the_llm_for_at_most_a_tenth_of_mixed_traffic() -> None:
    bench = load_bench()
    # 200 stranger messages from a pool of 10: each stranger writes 20 times.
    result = bench.simulate_mixed(2_000, strangers=10)
    assert result.messages == 2_000
    assert set(result.by_kind) == {"known", "stranger", "invite", "bad invite", "blocked"}
    # Known clients are admitted by rule, blocked ones never, valid invites admit.
    assert result.allowed_by_kind["known"] == result.by_kind["known"]
    assert result.allowed_by_kind.get("blocked", 0) == 0
    assert result.allowed_by_kind["invite"] == result.by_kind["invite"]
    assert result.allowed_by_kind.get("bad invite", 0) == 0
    # Strangers who keep writing reach the agent (careful: after 10 messages), once each,
    # then the cached verdict answers: far below a tenth of all messages.
    assert result.agent_consults == 10
    assert result.llm_share <= bench.TARGET_LLM_SHARE
    assert "mixed traffic, careful" in result.line()
