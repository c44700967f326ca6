"""The `Cluster` port over the snapshots: replicas are read from the cache, scaling is one short patch.

`replicas()` never touches the network: the Deployment's spec.replicas, its pods (the selector's
matches, terminating ones left out) with their billing start (when each got its GPU: the pod's
PodScheduled time) and readiness. `scale()` first sets `controller.kubernetes.io/pod-deletion-cost` on
a scale-down, so the ReplicaSet removes the not-yet-Ready pods and then those whose paid billing period
ends soonest (left alone it removes the newest pod, whose fresh billed hour is paid), then patches the
Deployment's scale subresource with field manager `ebbtide`, only when the count differs, and only while
this replica leads (checked again just before the write: fencing).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence

from kubernetes import client

from controller.daemon.pooltable import PoolTable
from controller.daemon.snapshots import Snapshots
from controller.kube.pods import DELETION_COST_ANNOTATION, PodInfo
from controller.ports import PodReplica, PoolRef, ReplicaStatus
from policies.billing import paid_until
from policies.spec import Billing

__all__ = ["FIELD_MANAGER", "KubeCluster", "deletion_costs"]

log = logging.getLogger("ebbtide.cluster")

FIELD_MANAGER = "ebbtide"


def deletion_costs(pods: Sequence[PodInfo], now: dt.datetime, billing: Billing) -> dict[str, int]:
    """Pod name -> deletion cost: lowest for the pod that should go first on a scale-down.

    First the pods without a GPU or not Ready (nothing paid is lost, nothing serving is cut), oldest
    first among them; then the Ready ones by the end of their paid billing period, soonest first (with
    per-second billing every period ends now, so the newest pod, the one least warmed up, goes first as
    the ReplicaSet would choose); the name breaks ties.
    """

    def rank(pod: PodInfo) -> tuple[int, float, float, str]:
        if pod.scheduled_at is None or not pod.ready:
            created = pod.created_at.timestamp() if pod.created_at else 0.0
            return (0, 0.0, created, pod.name)
        ends = paid_until(pod.scheduled_at, now, billing).timestamp()
        return (1, ends, -pod.scheduled_at.timestamp(), pod.name)

    ordered = sorted((p for p in pods if not p.deleting), key=rank)
    return {pod.name: index for index, pod in enumerate(ordered)}


class KubeCluster:
    """Reads replicas from the snapshots and scales through the API server."""

    def __init__(
        self,
        api: client.ApiClient,
        snapshots: Snapshots,
        table: PoolTable,
        *,
        leading: Callable[[], bool],
        now: Callable[[], dt.datetime],
        timeout_seconds: float = 3.0,
    ) -> None:
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._snapshots = snapshots
        self._table = table
        self._leading = leading
        self._now = now
        self._timeout = timeout_seconds

    def replicas(self, pool: PoolRef) -> ReplicaStatus:
        """The Deployment's replicas and pods as cached; LookupError when it is not in the cache."""
        key = (pool.deployment_namespace, pool.deployment)
        deployment = self._snapshots.deployments.items.get(key)
        if deployment is None:
            raise LookupError(f"Deployment {key[0]}/{key[1]} not found")
        pods = [p for p in self._snapshots.pods_of(deployment) if not p.deleting]
        return ReplicaStatus(
            current=deployment.replicas,
            ready=sum(1 for p in pods if p.ready),
            billing_starts=tuple(p.scheduled_at for p in pods if p.scheduled_at is not None),
            pods=tuple(PodReplica(p.name, p.scheduled_at, p.ready) for p in pods),
        )

    def scale(self, pool: PoolRef, replicas: int) -> None:
        """Patch the Deployment's scale to `replicas` (deletion costs first on a scale-down)."""
        if not self._leading():
            raise PermissionError("not the leader any more; not scaling")
        key = (pool.deployment_namespace, pool.deployment)
        deployment = self._snapshots.deployments.items.get(key)
        if deployment is None:
            raise LookupError(f"Deployment {key[0]}/{key[1]} not found")
        if deployment.replicas == replicas:
            return
        live = self._table.pools.get((pool.namespace, pool.name))
        if replicas < deployment.replicas and live is not None and live.spec is not None:
            self._set_deletion_costs(self._snapshots.pods_of(deployment), live.spec.billing)
        self._apps.patch_namespaced_deployment_scale(
            deployment.name,
            deployment.namespace,
            {"spec": {"replicas": replicas}},
            field_manager=FIELD_MANAGER,
            _request_timeout=self._timeout,
            _preload_content=False,
        )
        # The watch will bring the new spec.replicas; until then the cache says what was just written,
        # so the next tick neither patches again nor takes its own write for a manual change (the
        # reconciler records what it wrote).
        self._snapshots.deployments.items[key] = dataclasses.replace(deployment, replicas=replicas)

    def _set_deletion_costs(self, pods: Sequence[PodInfo], billing: Billing) -> None:
        costs = deletion_costs(pods, self._now(), billing)
        for pod in pods:
            cost = costs.get(pod.name)
            if cost is None or pod.deletion_cost == cost:
                continue
            body = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: str(cost)}}}
            try:
                self._core.patch_namespaced_pod(
                    pod.name, pod.namespace, body, _request_timeout=self._timeout, _preload_content=False
                )
            except Exception as exc:  # the scale-down still goes ahead; only the choice of pod may be worse
                log.warning("setting the deletion cost of pod %s/%s failed: %s", pod.namespace, pod.name, exc)
