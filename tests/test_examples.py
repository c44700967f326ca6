"""manifests/examples/: the São Paulo GPUPool validates and behaves as its comments say, and the vLLM
Deployment it targets is the one the pool expects."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from controller.cli import main
from controller.validate import load_pools
from policies.schedules import open_spans
from policies.spec import GPUPool

EXAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "examples"
SAO_PAULO = ZoneInfo("America/Sao_Paulo")


def _pool() -> GPUPool:
    pools, problems = load_pools(EXAMPLES / "gpupool.yaml")
    assert problems == []
    return pools[0]


def _vllm() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "vllm.yaml").read_text(encoding="utf-8")) if d]
    return {d["kind"]: d for d in docs}


def test_ebbtide_validate_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLES / "gpupool.yaml")]) == 0
    assert "valid (inference/assistant)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("local", "is_open"),
    [
        ("2026-12-01T08:00", True),  # a Tuesday, at the opening
        ("2026-12-01T18:59", True),
        ("2026-12-01T19:00", False),
        ("2026-12-01T07:59", False),
        ("2026-12-05T10:00", False),  # Saturday
        ("2026-12-25T10:00", False),  # Christmas, a Friday: a national holiday
        ("2026-11-20T10:00", False),  # Black Consciousness Day, national since 2024, a Friday
        ("2026-09-07T10:00", False),  # Independence Day, a Monday
        ("2026-11-19T10:00", True),  # the Thursday before: an ordinary day
    ],
)
def test_business_hours_in_sao_paulo_with_brazils_holidays(local: str, is_open: bool) -> None:
    now = dt.datetime.fromisoformat(local).replace(tzinfo=SAO_PAULO)
    assert bool(open_spans(_pool().spec.schedule, now)) is is_open


def test_prewarm_covers_a_three_minute_cold_start_and_overflow_goes_to_an_openai_api() -> None:
    spec = _pool().spec
    assert spec.cold_start_seconds == 180
    assert spec.schedule.windows[0].min_replicas >= 1
    provider = spec.fallback.providers[0]
    assert provider.base_url.startswith("https://") and provider.base_url.endswith("/v1")
    assert provider.api_key_secret_ref is not None


def test_the_vllm_deployment_is_what_the_pool_targets() -> None:
    spec = _pool().spec
    objects = _vllm()
    deployment, service = objects["Deployment"], objects["Service"]
    assert deployment["metadata"]["name"] == spec.target.deployment
    assert deployment["metadata"]["namespace"] == _pool().metadata.namespace
    assert "replicas" not in deployment["spec"], "Ebbtide owns spec.replicas; re-applying must not reset it"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--scheduling-policy=priority" in container["args"]
    assert f"--served-model-name={spec.target.served_model}" in container["args"]
    assert f"--port={spec.target.port}" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == spec.target.gpus_per_replica == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {p["containerPort"] for p in container["ports"]} == {spec.target.port}
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert "model-cache" in mounts
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {objects["PersistentVolumeClaim"]["metadata"]["name"]}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
