"""scripts/bench.py's latency-under-load section: medians, ranges and verdicts (issue 15)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    # bench.py imports its siblings (bench_pipeline, bench_raw) as it does from scripts/.
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPTS))
        spec = importlib.util.spec_from_file_location("bench_main", SCRIPTS / "bench.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def rated(bench: ModuleType, rate: float, p99_ms: float, **kw: object):
    """A rated run of 100 messages whose p99 is ``p99_ms`` (99 fast ones and one slow)."""
    latencies = (0.5,) * 98 + (p99_ms, p99_ms + 1.0)
    return bench.bp.RunResult("pipeline", rate, 100, 100, 1.0, latencies, **kw)


def sample(bench: ModuleType, cpu_us: float, rep: int):
    run = bench.bp.RunResult("pipeline", None, 1000, 1000, 1.0, (1.0,) * 1000)
    return bench.bench_raw.Sample("pipeline", rep, run, cpu_us * 1000 / 1e6, 0.1)


def test_medians_ranges_and_verdicts(bench) -> None:
    load = [
        [rated(bench, 1000.0, 4.0), rated(bench, 2500.0, 30.0)],
        [rated(bench, 1000.0, 3.0), rated(bench, 2500.0, 10.0)],
        [rated(bench, 1000.0, 9.0), rated(bench, 2500.0, 12.0)],
    ]
    paired = [sample(bench, us, rep) for rep, us in enumerate((140.0, 120.0, 200.0))]
    text, ok = bench.load_section(load, paired)
    assert "p99 at 1,000 msg/s offered: 4.00 ms (median of 3, range 3.00-9.00)" in text
    assert "target <= 5 ms: met" in text
    assert "p99 at 2,500 msg/s offered: 12.00 ms (median of 3, range 10.00-30.00)" in text
    assert "gateway CPU per message at saturation: 140 µs (median of 3, range 120-200)" in text
    assert ok


def test_a_missed_target_or_an_overloaded_run_fails(bench) -> None:
    slow = [[rated(bench, 1000.0, 6.0), rated(bench, 2500.0, 5.0)]]
    text, ok = bench.load_section(slow, [sample(bench, 100.0, 0)])
    assert "6.00 ms" in text and "NOT met" in text and not ok
    cut = [[rated(bench, 1000.0, 1.0), rated(bench, 2500.0, 5.0, overloaded=True)]]
    text, ok = bench.load_section(cut, [sample(bench, 100.0, 0)])
    assert "1 run(s) overloaded or lossy" in text and not ok
    costly = [[rated(bench, 1000.0, 1.0), rated(bench, 2500.0, 5.0)]]
    text, ok = bench.load_section(costly, [sample(bench, 400.0, 0)])
    assert "400 µs" in text and "NOT met" in text and not ok
