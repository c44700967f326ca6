"""The GPUPool CustomResourceDefinition, generated from the pydantic spec (its one source of truth).

Pydantic's JSON schema is turned into a Kubernetes structural schema: references inlined, titles and
`additionalProperties: false` dropped (the API server prunes unknown fields instead), `anyOf [X, null]`
folded into `nullable: true`, and the models' CEL rules kept as `x-kubernetes-validations`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from policies.spec import API_GROUP, API_VERSION, KIND, PLURAL, GPUPoolSpec, GPUPoolStatus

__all__ = ["CRD_PATH", "crd_manifest", "crd_yaml", "structural"]

CRD_PATH = Path("manifests/crds") / f"{PLURAL}.{API_GROUP}.yaml"

_DROP = {"title", "additionalProperties", "$defs"}


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite a pydantic JSON schema into a Kubernetes structural OpenAPI v3 schema."""
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        target = defs[schema["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(schema["anyOf"])
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types in a structural schema")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        folded = structural({**options[0], **rest}, defs)
        if nullable:
            folded["nullable"] = True
        return folded
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP:
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out[key] = {name: structural(prop, defs) for name, prop in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        else:
            out[key] = value
    # OpenAPI v3.0 (what CRDs use) writes an exclusive bound as a boolean beside minimum/maximum;
    # pydantic writes JSON Schema's numeric form, which the API server refuses.
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(flag), int | float) and not isinstance(out.get(flag), bool):
            out[bound] = out[flag]
            out[flag] = True
    if out.get("type") == "number" and isinstance(out.get("default"), int):
        out["default"] = float(out["default"])
    return out


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Deployment", "type": "string", "jsonPath": ".spec.target.deployment"},
        {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Window", "type": "string", "jsonPath": ".status.activeWindow"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.lastDecision.reason"},
        {"name": "Next", "type": "string", "jsonPath": ".status.nextChange.what", "priority": 1},
        {"name": "Next at", "type": "date", "jsonPath": ".status.nextChange.time", "priority": 1},
        {"name": "GPU-h today", "type": "number", "jsonPath": ".status.gpuHoursToday", "priority": 1},
        {"name": "Fallback $ today", "type": "number", "jsonPath": ".status.fallbackUsdToday", "priority": 1},
        {"name": "Fallback", "type": "boolean", "jsonPath": ".status.fallbackOpen", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition object for GPUPool."""
    spec_schema = structural(GPUPoolSpec.model_json_schema(by_alias=True, mode="validation"))
    status_schema = structural(GPUPoolStatus.model_json_schema(by_alias=True, mode="validation"))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["gpool"],
                "categories": ["ebbtide"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A pool of vLLM replicas that Ebbtide scales by demand and schedule.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed under manifests/crds/."""
    header = "# Generated by `ebbtide crd` from policies/spec/; do not edit by hand.\n"
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=110, allow_unicode=True)
