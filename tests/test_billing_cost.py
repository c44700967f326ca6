"""Billing granularity, API bills and the seed's cost table."""

from __future__ import annotations

import datetime as dt

import pytest

from controller.cli import main
from policies.billing import billed_seconds, gpu_cost_usd, paid_until
from policies.cost import ApiPrice, api_cost_usd, breakeven_tokens, usd_per_million_tokens
from policies.spec import Billing


@pytest.mark.parametrize(
    ("granularity", "minimum", "running", "billed"),
    [
        ("second", 60, 0.2, 60),
        ("second", 60, 61.2, 62),
        ("minute", 0, 61, 120),
        ("minute", 0, 120, 120),
        ("hour", 0, 1, 3600),
        ("hour", 0, 3600, 3600),
        ("hour", 0, 3600.5, 7200),
        ("hour", 7200, 10, 7200),
    ],
)
def test_billed_seconds(granularity: str, minimum: int, running: float, billed: float) -> None:
    billing = Billing(granularity=granularity, minimum_billed_seconds=minimum)  # type: ignore[arg-type]
    assert billed_seconds(running, billing) == billed


def test_gpu_cost_sums_replica_intervals() -> None:
    billing = Billing(gpu_hourly_usd=2.0, granularity="hour", minimum_billed_seconds=0)  # type: ignore[arg-type]
    # 30 min bills 1 h, exactly 3600 s bills 1 h, 7200.5 s bills 3 h; two GPUs each.
    hours, usd = gpu_cost_usd([(0, 1800), (100, 3700), (0, 7200.5)], billing, gpus_per_replica=2)
    assert hours == 2 * (1 + 1 + 3)
    assert usd == 20.0


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="ends"):
        gpu_cost_usd([(10, 5)], Billing())


def test_paid_until_hour_boundaries() -> None:
    billing = Billing(granularity="hour", minimum_billed_seconds=0)  # type: ignore[arg-type]
    start = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.UTC)
    assert paid_until(start, start, billing) == start + dt.timedelta(hours=1)
    assert paid_until(start, start + dt.timedelta(minutes=59), billing) == start + dt.timedelta(hours=1)
    assert paid_until(start, start + dt.timedelta(minutes=61), billing) == start + dt.timedelta(hours=2)


def test_api_cost_and_effective_price() -> None:
    mid = ApiPrice(3, 15)
    assert api_cost_usd(300e6, 100e6, mid) == 2400
    assert usd_per_million_tokens(2400, 400e6) == 6
    assert usd_per_million_tokens(5, 0) == float("inf")
    assert breakeven_tokens(1200, 0.75, mid) == pytest.approx(200e6)


def test_breakeven_reproduces_the_seed_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["breakeven", "--input-tokens", "300M", "--output-tokens", "100M"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("(")[0].strip(): line.split()[-1] for line in out.splitlines() if line.startswith("API")}
    assert rows == {"API — frontier": "$12,000", "API — mid-tier": "$2,400", "API — lightweight": "$800"}
    gpu = next(line for line in out.splitlines() if line.startswith("H100 self-hosted 24/7"))
    assert "730 h" in gpu and gpu.split()[-1] == "$1,200"
    breakeven = {
        line.split()[0]: line.split()[2]
        for line in out.splitlines()
        if line.split() and line.split()[0] in {"frontier", "mid-tier", "lightweight"}
    }
    assert breakeven == {"frontier": "40M", "mid-tier": "200M", "lightweight": "600M"}


def test_breakeven_checks_gpu_capacity(capsys: pytest.CaptureFixture[str]) -> None:
    # 10 tok/s is 26.3M tokens a month: no tier's break-even is reachable by one GPU.
    assert main(["breakeven", "--gpu-tokens-per-second", "10"]) == 0
    out = capsys.readouterr().out
    assert out.count("never with one GPU") == 3
    assert "saturated: serves 7% of the volume" in out


@pytest.mark.parametrize("bad", ["--input-tokens=lots", "--tier=cheap", "--gpu-monthly-usd=-5"])
def test_breakeven_rejects_bad_flags(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["breakeven", bad])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
