"""A pod as the controller and the gateway need it: identity, address, readiness and billing start.

Both discover a pool's replicas the same way: the pods that the target Deployment's selector matches,
at their own IPs (never a Service's ClusterIP, never EndpointSlices), Ready and not terminating. These
functions are pure: they read the JSON of a pod as the API server serves it (camelCase keys), which is
also what a watch with `_preload_content=False` yields.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DELETION_COST_ANNOTATION", "PodInfo", "parse_time", "pod_info", "ready_endpoints", "selector_matches"]

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
"""A ReplicaSet scaling down deletes pods with the lowest cost first (Kubernetes >= 1.22)."""


@dataclass(frozen=True, slots=True)
class PodInfo:
    """The parts of a pod that scaling, billing and routing read."""

    name: str
    namespace: str
    uid: str
    labels: Mapping[str, str]
    ip: str | None
    """status.podIP; None until the pod has one."""
    ready: bool
    """The Ready condition is True and the pod is not terminating."""
    scheduled_at: dt.datetime | None
    """When the pod was bound to a node (the PodScheduled condition): the start of its GPU billing."""
    created_at: dt.datetime | None
    deleting: bool
    """metadata.deletionTimestamp is set: the pod is going away and takes no new work."""
    node: str | None
    deletion_cost: int | None
    """The pod-deletion-cost annotation as written, None when absent or not an integer."""
    phase: str


def parse_time(text: object) -> dt.datetime | None:
    """An RFC 3339 time as the API server writes it ('2026-12-01T10:00:00Z'), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition
    return None


def pod_info(obj: Mapping[str, Any]) -> PodInfo:
    """Read a pod's JSON (as served by the API) into a PodInfo; missing parts become None or False."""
    meta: Mapping[str, Any] = obj.get("metadata") or {}
    status: Mapping[str, Any] = obj.get("status") or {}
    spec: Mapping[str, Any] = obj.get("spec") or {}
    deleting = meta.get("deletionTimestamp") is not None
    ready_condition = _condition(status, "Ready")
    ready = ready_condition is not None and ready_condition.get("status") == "True" and not deleting
    scheduled = _condition(status, "PodScheduled")
    scheduled_at = None
    if scheduled is not None and scheduled.get("status") == "True":
        scheduled_at = parse_time(scheduled.get("lastTransitionTime"))
    if scheduled_at is None and spec.get("nodeName"):
        # Bound but without the condition's time (some fake kubelets): the pod's start, else its creation.
        scheduled_at = parse_time(status.get("startTime")) or parse_time(meta.get("creationTimestamp"))
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    cost_text = annotations.get(DELETION_COST_ANNOTATION)
    try:
        cost = int(cost_text) if cost_text is not None else None
    except ValueError:
        cost = None
    return PodInfo(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        uid=str(meta.get("uid", "")),
        labels=dict(meta.get("labels") or {}),
        ip=status.get("podIP") or None,
        ready=ready,
        scheduled_at=scheduled_at,
        created_at=parse_time(meta.get("creationTimestamp")),
        deleting=deleting,
        node=spec.get("nodeName") or None,
        deletion_cost=cost,
        phase=str(status.get("phase", "")),
    )


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions, as in a Deployment) matches the labels.

    An empty or missing selector matches nothing: a Deployment always has one, and matching every pod
    of the namespace would be a dangerous default.
    """
    if not selector:
        return False
    match_labels: Mapping[str, str] = selector.get("matchLabels") or {}
    expressions: Iterable[Mapping[str, Any]] = selector.get("matchExpressions") or ()
    if not match_labels and not expressions:
        return False
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    for expression in expressions:
        key, operator = expression.get("key", ""), expression.get("operator", "")
        values = set(expression.get("values") or ())
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def ready_endpoints(pods: Iterable[PodInfo], port: int) -> list[tuple[str, str]]:
    """(pod name, "ip:port") of every Ready pod with an IP, sorted by name: where a pool's requests go."""
    return sorted((p.name, f"{p.ip}:{port}") for p in pods if p.ready and p.ip)
