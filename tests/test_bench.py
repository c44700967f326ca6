"""The benchmark harness: its statistics, and one short real run (upstream, a passthrough and
the load generator as separate processes on loopback) that prints a table of measured rows."""

from __future__ import annotations

import math

import pytest

from gateway.bench import RunResult, main, percentile, summarize


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([1.0, float("inf")], 0.5) == 1.0


def test_failed_requests_count_as_infinitely_slow() -> None:
    raw = {"latencies": [0.001] * 98 + [None, None], "elapsed": 2.0}
    result = summarize(50.0, raw)
    assert result == RunResult(50.0, 49.0, 1.0, math.inf, 2)
    assert summarize(50.0, {"latencies": [None], "elapsed": None}).sustained == 0.0


def test_a_short_run_prints_a_measured_row_per_target(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--targets", "direct,passthrough", "--rates", "40", "--runs", "1", "--duration", "1", "--warmup", "0.2"]
    assert main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| direct") or
            line.startswith("| passthrough")]  # fmt: skip
    assert len(rows) == 4  # two targets x plain and streaming
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        offered, sustained, failed = float(cells[2]), float(cells[3]), int(cells[8])
        assert offered == 40 and failed == 0
        assert 30 <= sustained <= 41, row  # 40 requests a second were answered, give or take the ramp
        assert 0 < float(cells[4]) <= float(cells[5])  # p50 <= p99
