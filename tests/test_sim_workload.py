"""The week builder: the profile's shape at the asked peak, the real sizes, and the same seed twice."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from controller.sim.traces import Trace, read_trace
from controller.sim.workload import build_week, load_profile, peak_rps_for_monthly_tokens

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "traces"
MONDAY = dt.datetime(2024, 5, 13, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def trace() -> Trace:
    return read_trace(EXAMPLES / "azure_code_2023.csv")


def test_same_seed_same_workload_other_seed_differs(trace: Trace) -> None:
    profile = load_profile(EXAMPLES / "azure2024_diurnal.json", "code")
    a = build_week(trace, profile, days=2, start=MONDAY, peak_rps=3.0, seed=7)
    b = build_week(trace, profile, days=2, start=MONDAY, peak_rps=3.0, seed=7)
    c = build_week(trace, profile, days=2, start=MONDAY, peak_rps=3.0, seed=8)
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert np.array_equal(a.input_tokens, b.input_tokens)
    assert np.array_equal(a.output_tokens, b.output_tokens)
    assert not np.array_equal(a.arrival_s[:100], c.arrival_s[:100])


def test_busiest_hour_averages_the_peak_and_the_shape_follows_the_profile(trace: Trace) -> None:
    profile = load_profile(EXAMPLES / "azure2024_diurnal.json", "code")
    week = build_week(trace, profile, days=7, start=MONDAY, peak_rps=10.0, seed=1)
    per_hour = np.bincount((week.arrival_s // 3600).astype(np.int64), minlength=168) / 3600.0
    busiest = int(np.argmax(profile.weekday))
    weekday_peaks = per_hour[[d * 24 + busiest for d in range(5)]]
    assert weekday_peaks.mean() == pytest.approx(10.0, rel=0.03)
    # Weekday nights are about 10x quieter than the peak; weekends quieter than weekdays.
    night = int(np.argmin(profile.weekday))
    assert per_hour[night] < per_hour[busiest] / 5
    assert per_hour[5 * 24 : 7 * 24].mean() < per_hour[: 5 * 24].mean() * 0.6


def test_sizes_and_bursts_come_from_the_real_hour(trace: Trace) -> None:
    profile = load_profile(EXAMPLES / "azure2024_diurnal.json", "code")
    week = build_week(trace, profile, days=1, start=MONDAY, peak_rps=5.0, seed=3)
    real_pairs = set(zip(trace.input_tokens.tolist(), trace.output_tokens.tolist(), strict=True))
    assert set(zip(week.input_tokens.tolist(), week.output_tokens.tolist(), strict=True)) <= real_pairs
    # Bursty like the real hour: per-second counts overdispersed well beyond a Poisson process.
    counts = np.bincount(week.arrival_s.astype(np.int64))
    busy = counts[17 * 3600 : 20 * 3600]
    assert busy.var() > 2 * busy.mean()


def test_monthly_tokens_sets_the_peak(trace: Trace) -> None:
    profile = load_profile(EXAMPLES / "azure2024_diurnal.json", "code")
    peak = peak_rps_for_monthly_tokens(trace, profile, 400e6)
    week = build_week(trace, profile, days=7, start=MONDAY, peak_rps=peak, seed=0)
    monthly = week.total_tokens / (7 * 24) * 730
    assert monthly == pytest.approx(400e6, rel=0.1)
