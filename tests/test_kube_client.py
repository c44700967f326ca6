"""controller.kube.client: time formats the API server accepts, and clear errors for a bad configuration."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from controller.kube.client import KubeConfigError, api_client, format_micro_time, format_time


def test_micro_time_keeps_six_digits_even_on_a_whole_second() -> None:
    # isoformat() would drop ".000000" here, and the API server refuses a MicroTime without it.
    whole = dt.datetime(2026, 12, 1, 10, 0, 0, tzinfo=dt.UTC)
    assert format_micro_time(whole) == "2026-12-01T10:00:00.000000Z"
    assert format_micro_time(whole.replace(microsecond=42)) == "2026-12-01T10:00:00.000042Z"


def test_times_are_converted_to_utc() -> None:
    berlin = dt.timezone(dt.timedelta(hours=1))
    moment = dt.datetime(2026, 12, 1, 11, 0, 0, 500_000, tzinfo=berlin)
    assert format_time(moment) == "2026-12-01T10:00:00Z"
    assert format_micro_time(moment) == "2026-12-01T10:00:00.500000Z"


def test_a_naive_time_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        format_time(dt.datetime(2026, 12, 1, 10, 0))


def test_missing_kubeconfig_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(KubeConfigError, match=f"kubeconfig {missing}: no such file"):
        api_client(str(missing))


def test_kubeconfig_that_is_not_yaml_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters: [unclosed\n")
    with pytest.raises(KubeConfigError, match="not valid YAML"):
        api_client(str(bad))


def test_kubeconfig_without_a_context_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with pytest.raises(KubeConfigError, match=f"kubeconfig {empty}: .*context"):
        api_client(str(empty))


def test_in_cluster_outside_a_pod_says_to_pass_a_kubeconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeConfigError, match="--kubeconfig"):
        api_client(None)
