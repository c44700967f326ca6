"""`ebbtide validate`: every problem named with its field path and rule; exit 2 when invalid."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main

VALID = Path(__file__).resolve().parents[1] / "examples" / "gpupool.yaml"

HEAD = """apiVersion: ebbtide.dev/v1alpha1
kind: GPUPool
metadata: {name: p, namespace: ns}
spec:
"""


def run(tmp_path: Path, body: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "pool.yaml"
    path.write_text(HEAD + body, encoding="utf-8")
    code = main(["validate", str(path)])
    return code, capsys.readouterr().out


def test_shipped_example_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(VALID)]) == 0
    assert "valid (inference/chat)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("body", "path", "rule"),
    [
        (
            "  target: {deployment: d, minReplicas: 3, maxReplicas: 2}\n",
            "spec.target",
            "minReplicas (3) must be <= maxReplicas (2)",
        ),
        (
            "  target: {deployment: d}\n  schedule: {timezone: Mars/Olympus}\n",
            "spec.schedule.timezone",
            "unknown timezone 'Mars/Olympus'",
        ),
        (
            "  target: {deployment: d}\n  schedule: {windows: [{days: [mon], start: '09:00', end: '09:00'}]}\n",
            "spec.schedule.windows[0]",
            "start (09:00) must differ from end (09:00)",
        ),
        (
            "  target: {deployment: d}\n  schedule: {windows: [{days: [mon], start: '9am', end: '17:00'}]}\n",
            "spec.schedule.windows[0].start",
            "String should match pattern",
        ),
        (
            "  target: {deployment: d}\n  billing: {gpuHourlyUsd: -1}\n",
            "spec.billing.gpuHourlyUsd",
            "greater than or equal to 0",
        ),
        (
            "  target: {deployment: d}\n"
            "  fallback: {providers: [{name: a, baseUrl: https://a.example/v1, outputUsdPerMillion: -0.5}]}\n",
            "spec.fallback.providers[0].outputUsdPerMillion",
            "greater than or equal to 0",
        ),
        (  # the single-provider form of earlier releases gets a message saying what to write instead
            "  target: {deployment: d}\n  fallback: {baseUrl: https://a.example/v1, inputUsdPerMillion: 3}\n",
            "spec.fallback",
            "baseUrl, inputUsdPerMillion moved into a provider: write fallback.providers",
        ),
        (
            "  target: {deployment: d}\n"
            "  fallback: {providers: [{name: a, baseUrl: https://a.example/v1}, {name: a, baseUrl: https://b.example}]}\n",
            "spec.fallback",
            "provider names must be unique (repeated: a)",
        ),
        (
            "  target: {deployment: d}\n"
            "  fallback: {providers: [{name: a, baseUrl: https://a.example/v1, apiKeyEnv: K, apiKeyFile: /k}]}\n",
            "spec.fallback.providers[0]",
            "give at most one of apiKeyEnv, apiKeyFile",
        ),
        (
            "  target: {deployment: d}\n  metrics: {source: prometheus}\n",
            "spec.metrics",
            "source prometheus needs the prometheus section",
        ),
        (
            "  target: {deployment: d, port: 70000}\n",
            "spec.target.port",
            "less than or equal to 65535",
        ),
        (
            "  target: {deployment: d}\n  models: [llama, llama]\n",
            "spec",
            "models must not repeat a name (repeated: llama)",
        ),
        (
            "  target: {deployment: d}\n  schedule: {holidays: {dates: [christmas]}}\n",
            "spec.schedule.holidays.dates[0]",
            "valid date",
        ),
        (
            "  target: {deployment: d}\n  schedule: {holidays: {calendars: [{country: XX}]}}\n",
            "spec.schedule.holidays.calendars[0]",
            "country 'XX' has no holiday calendar",
        ),
        (
            "  target: {deployment: d}\n  schedule: {holidays: {calendars: [{country: DE, subdivision: ZZ}]}}\n",
            "spec.schedule.holidays.calendars[0]",
            "subdivision 'ZZ' is not a region of DE",
        ),
        (
            "  target: {deployment: d, maxReplicas: 4}\n  schedule:\n    windows:\n"
            "      - {name: a, days: [mon], start: '08:00', end: '12:00', minReplicas: 1}\n"
            "      - {name: b, days: [mon], start: '11:00', end: '13:00', minReplicas: 2}\n",
            "spec.schedule",
            "windows[0] ('a') and windows[1] ('b') overlap with different replica limits",
        ),
        (
            "  target: {deployment: d, maxReplicas: 4}\n  schedule:\n    windows:\n"
            "      - {name: late, days: [sun], start: '22:00', end: '02:00', minReplicas: 1}\n"
            "      - {name: early, days: [mon], start: '01:00', end: '03:00', minReplicas: 2}\n",
            "spec.schedule",
            "windows[0] ('late') and windows[1] ('early') overlap",
        ),
        (
            "  target: {deployment: d}\n  demand: {targetQueuePerReplica: 0}\n",
            "spec.demand.targetQueuePerReplica",
            "greater than 0",
        ),
        (
            "  target: {deployment: d}\n  demand: {replicaMeanTokensPerSecond: 0}\n",
            "spec.demand.replicaMeanTokensPerSecond",
            "greater than 0",
        ),
        (  # the mean sizes with headroom under a replica's capacity, never above it
            "  target: {deployment: d}\n  demand: {replicaTokensPerSecond: 6000, replicaMeanTokensPerSecond: 7000}\n",
            "spec.demand",
            "replicaMeanTokensPerSecond (7000) must be <= replicaTokensPerSecond (6000)",
        ),
        (  # the gateway's estimate needs both speeds: a prefill speed alone is no model of a replica
            "  target: {deployment: d}\n  demand: {replicaPrefillTokensPerSecond: 10000}\n",
            "spec.demand",
            "replicaPrefillTokensPerSecond and replicaDecodeTokensPerSecond go together",
        ),
        (
            "  target: {deployment: d}\n"
            "  demand: {replicaPrefillTokensPerSecond: 10000, replicaDecodeTokensPerSecond: 0}\n",
            "spec.demand.replicaDecodeTokensPerSecond",
            "greater than 0",
        ),
        ("  target: {deployment: d}\n  tagret: {}\n", "spec.tagret", "unknown field"),
        ("  schedule: {}\n", "spec.target", "required field is missing"),
        (
            "  target: {deployment: d}\n  schedule: {overrides: [{mode: off, until: '2026-12-24T18:00:00'}]}\n",
            "spec.schedule.overrides[0].until",
            "needs a UTC offset",
        ),
        (
            "  target: {deployment: d, maxReplicas: 1}\n  schedule: {windows: [{days: [mon], start: '08:00', "
            "end: '09:00', minReplicas: 3}]}\n",
            "spec",
            "minReplicas (3) exceeds the pool's maxReplicas (1)",
        ),
    ],
)
def test_each_problem_names_field_and_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, path: str, rule: str
) -> None:
    code, out = run(tmp_path, body, capsys)
    assert code == 2
    assert f": {path}: " in out, out
    assert rule in out, out


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = (
        "  target: {deployment: d, minReplicas: 5, maxReplicas: 1}\n  schedule: {timezone: Nowhere/Land}\n"
        "  billing: {gpuHourlyUsd: -2}\n"
    )
    code, out = run(tmp_path, body, capsys)
    assert code == 2
    assert len(out.strip().splitlines()) == 3, out


def test_cross_midnight_window_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = "  target: {deployment: d}\n  schedule: {windows: [{days: [fri], start: '22:00', end: '06:00'}]}\n"
    assert run(tmp_path, body, capsys)[0] == 0


def test_broken_yaml_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(tmp_path, "  target: {deployment: d\n  bad: [\n", capsys)
    assert code == 2
    assert "not valid YAML at line" in out


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().out


def test_multi_document_file_numbers_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(VALID.read_text() + "\n---\n" + HEAD + "  target: {deployment: d, maxReplicas: -1}\n")
    assert main(["validate", str(path)]) == 2
    assert "document 2: spec.target.maxReplicas: " in capsys.readouterr().out
