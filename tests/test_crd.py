"""The committed CRD is exactly what the spec generates, and is a valid structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from controller.crd import CRD_PATH, crd_manifest, crd_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_committed_crd_matches_the_models() -> None:
    committed = (ROOT / CRD_PATH).read_text(encoding="utf-8")
    assert committed == crd_yaml(), "manifests/crds is stale: run `ebbtide crd` and commit the result"


def _walk(node: Any, path: str = "") -> list[str]:
    problems = []
    if isinstance(node, dict):
        for key in ("$ref", "anyOf", "allOf", "oneOf", "$defs", "title", "additionalProperties"):
            if key in node:
                problems.append(f"{path}: has {key}")
        if "properties" in node and node.get("type") != "object":
            problems.append(f"{path}: properties without type object")
        if node.get("default", 0) is None:
            problems.append(f"{path}: null default")
        for flag in ("exclusiveMinimum", "exclusiveMaximum"):
            if flag in node and not isinstance(node[flag], bool):
                problems.append(f"{path}: {flag} must be a boolean in OpenAPI v3.0")
        for key, value in node.items():
            problems += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            problems += _walk(value, f"{path}[{i}]")
    return problems


def test_schema_is_structural() -> None:
    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []


def test_schema_carries_cel_rules_and_limits() -> None:
    spec = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    target = spec["properties"]["target"]
    assert {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must be <= maxReplicas"} in (
        target["x-kubernetes-validations"]
    )
    assert target["properties"]["maxReplicas"]["minimum"] == 0
    assert target["required"] == ["deployment"]
    window = spec["properties"]["schedule"]["properties"]["windows"]["items"]
    assert any(v["rule"] == "self.start != self.end" for v in window["x-kubernetes-validations"])
    assert spec["properties"]["billing"]["properties"]["granularity"]["enum"] == ["second", "minute", "hour"]
    assert "Expected seconds from scale-up to Ready" in spec["properties"]["coldStartSeconds"]["description"]


def test_yaml_round_trips() -> None:
    assert yaml.safe_load(crd_yaml()) == crd_manifest()
