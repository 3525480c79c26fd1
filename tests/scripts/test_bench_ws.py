"""scripts/bench_ws.py: the figures it derives, its table, and one tiny real run (issue 7)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    # bench_ws imports bench_pipeline as a sibling, as it does when run from scripts/.
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPTS))
        spec = importlib.util.spec_from_file_location("bench_ws", SCRIPTS / "bench_ws.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def run(bench: ModuleType, offered: float | None, completed: int, seconds: float, lat=()):
    return bench.RunResult(
        "x", offered, sent=completed, completed=completed, seconds=seconds, latencies_ms=lat
    )


def sample(bench, library, shape, offered, completed, seconds, cpu_s, lat=(), missing=0):
    return bench.Sample(
        library,
        shape,
        run(bench, offered, completed, seconds, tuple(lat)),
        cpu_s,
        missing,
        server_cpu_s=cpu_s / 2,
    )


def test_aggregate_takes_median_throughput_and_pools_latency_and_cpu(bench) -> None:
    tw, ws = bench.TRIO_WEBSOCKET, bench.WEBSOCKETS
    samples = [
        # three saturation rounds of trio-websocket/raw: 1,000, 2,000 and 4,000 msg/s
        sample(bench, tw, "raw", None, 1000, 1.0, 0.05),
        sample(bench, tw, "raw", None, 1000, 0.5, 0.05),
        sample(bench, tw, "raw", None, 1000, 0.25, 0.05),
        # two rated rounds, latencies 1..100 ms pooled
        sample(bench, tw, "raw", 1000.0, 50, 0.05, 0.01, [float(i) for i in range(1, 51)]),
        sample(bench, tw, "raw", 1000.0, 50, 0.05, 0.01, [float(i) for i in range(51, 101)]),
        sample(bench, ws, "raw", None, 500, 0.1, 0.02, missing=3),
        sample(bench, ws, "raw", 1000.0, 4, 0.004, 0.0004, [1.0, 2.0, 3.0, 4.0]),
    ]
    rows = {(r.library, r.shape): r for r in bench.aggregate(samples)}
    assert list(rows) == [(tw, "raw"), (ws, "raw")]
    base = rows[tw, "raw"]
    assert base.saturation == pytest.approx(2000.0)
    assert (base.saturation_min, base.saturation_max) == pytest.approx((1000.0, 4000.0))
    assert base.p50_ms == 50.0
    assert base.p99_ms == 99.0
    assert base.cpu_sat_us == pytest.approx(0.15 / 3000 * 1e6)  # 50 µs
    assert base.cpu_rated_us == pytest.approx(0.02 / 100 * 1e6)  # 200 µs
    assert base.server_cpu_sat_us == pytest.approx(25.0)
    assert base.sent == 3100
    assert base.lost == 0
    alt = rows[ws, "raw"]
    assert alt.saturation == pytest.approx(5000.0)
    assert alt.cpu_sat_us == pytest.approx(40.0)
    assert alt.cpu_rated_us == pytest.approx(100.0)
    assert alt.lost == 3  # what the client missed counts as lost


def test_ratios_are_websockets_over_trio_websocket_per_shape(bench) -> None:
    def row(library: str, shape: str, sat: float, cpu: float):
        return bench.Row(library, shape, sat, sat, sat, 1.0, 2.0, cpu, 2 * cpu, 30.0, 100, 0)

    rows = [
        row(bench.TRIO_WEBSOCKET, "raw", 10_000.0, 50.0),
        row(bench.WEBSOCKETS, "raw", 12_500.0, 40.0),
        row(bench.TRIO_WEBSOCKET, "gateway", 8_000.0, 80.0),
        row(bench.WEBSOCKETS, "gateway", 6_000.0, 100.0),
    ]
    got = bench.ratios(rows)
    assert set(got) == {"raw", "gateway"}
    assert got["raw"]["saturation"] == pytest.approx(1.25)
    assert got["raw"]["cpu_sat_us"] == pytest.approx(0.8)
    assert got["raw"]["cpu_rated_us"] == pytest.approx(0.8)
    assert got["raw"]["p99_ms"] == pytest.approx(1.0)
    assert got["gateway"]["saturation"] == pytest.approx(0.75)
    assert got["gateway"]["cpu_sat_us"] == pytest.approx(1.25)
    # a shape measured with one library only has no ratio
    assert bench.ratios(rows[:1]) == {}

    text = bench.format_ratios(got)
    lines = text.splitlines()
    assert "msg/s" in lines[0] and "cpu µs/msg sat" in lines[0]
    assert "1.25" in lines[2] and "0.80" in lines[2] and "raw" in lines[2]
    assert "0.75" in lines[3] and "gateway" in lines[3]


def test_table_is_fixed_width_with_one_line_per_row(bench) -> None:
    rows = [
        bench.Row(
            bench.TRIO_WEBSOCKET,
            "raw",
            9876.4,
            6095.5,
            15305.5,
            0.871,
            1.723,
            62.14,
            151.66,
            60.0,
            4000,
            0,
        ),
        bench.Row(
            bench.WEBSOCKETS,
            "gateway",
            13943.0,
            13943.0,
            13943.0,
            0.84,
            1.56,
            72.7,
            247.2,
            70.0,
            4000,
            2,
        ),
    ]
    lines = bench.format_table(rows, 1000.0).splitlines()
    assert len(lines) == 4
    assert "p99 ms @1000/s" in lines[0]
    assert len({len(line) for line in lines}) == 1  # fixed width
    assert lines[2].split() == [
        "trio-websocket", "raw", "9,876", "6.1k-15.3k", "0.87", "1.72", "62.1", "151.7", "60.0", "4000", "0",
    ]  # fmt: skip
    assert lines[3].split()[-1] == "2"


@pytest.mark.timeout(60)
async def test_tiny_real_run_of_both_libraries_loses_nothing(bench) -> None:
    pytest.importorskip("websockets.trio")
    samples = await bench.measure(rounds=1, rate=1000.0, seconds=0.2, saturation=200)
    assert {(s.library, s.shape) for s in samples} == {
        (lib, shape) for lib in bench.LIBRARIES for shape in bench.SHAPES
    }
    assert len(samples) == 8  # a rated and a saturation run each
    for s in samples:
        assert s.run.sent == 200
        assert s.run.completed == 200
        assert s.missing == 0
        assert s.cpu_s > 0
    rows = bench.aggregate(samples)
    assert len(rows) == 4
    for r in rows:
        assert r.lost == 0
        assert r.saturation > 0
        assert 0 < r.p50_ms <= r.p99_ms
        assert r.cpu_sat_us > 0 and r.cpu_rated_us > 0
        assert not math.isnan(r.server_cpu_sat_us)
    assert set(bench.ratios(rows)) == set(bench.SHAPES)
