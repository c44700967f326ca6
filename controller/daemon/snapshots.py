"""In-memory snapshots of the cluster, kept by list+watch in the background: the tick reads only these.

GPUPools (raw JSON), Deployments, Pods and HPAs (reduced to the few fields the daemon reads, which keeps
memory small with many pods), and optionally the gateway's pods, each kept by a `Watched`
(controller/daemon/watch.py). Changes arrive on the event loop, so the tick never sees a half-applied
update; `stale()` says when a kind has been failing long enough that changes may have been missed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from controller.daemon.watch import Key, Watched
from controller.kube.pods import PodInfo, pod_info, selector_matches
from policies.spec import API_GROUP, API_VERSION, PLURAL

__all__ = [
    "PAUSED_ANNOTATION",
    "REFUSAL_GRACE_SECONDS",
    "DeploymentInfo",
    "HpaInfo",
    "Key",
    "Snapshots",
    "Watched",
    "deployment_info",
    "hpa_info",
]


PAUSED_ANNOTATION = "ebbtide.dev/paused"
"""`"true"` on a GPUPool or its Deployment: decide and report, never patch."""
REFUSAL_GRACE_SECONDS = 2.0
"""How long a refused first list waits for the other kinds' first answers (`Snapshots.wait_synced`)."""
_REFUSALS = ("HTTP 401", "HTTP 403", "HTTP 404")


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """The parts of a Deployment the daemon reads."""

    name: str
    namespace: str
    uid: str
    replicas: int
    """spec.replicas: what the scale subresource sets and what the policy calls the current replicas."""
    ready: int
    selector: Mapping[str, Any]
    paused: bool
    """Carries the ebbtide.dev/paused annotation."""
    resource_version: str


@dataclass(frozen=True, slots=True)
class HpaInfo:
    """An autoscaling/v2 HorizontalPodAutoscaler and what it scales."""

    name: str
    namespace: str
    target_kind: str
    target_name: str


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def is_paused(obj: Mapping[str, Any]) -> bool:
    """Whether an object carries ebbtide.dev/paused: "true"."""
    annotations = _meta(obj).get("annotations") or {}
    return str(annotations.get(PAUSED_ANNOTATION, "")).strip().lower() == "true"


def deployment_info(obj: Mapping[str, Any]) -> DeploymentInfo:
    """Reduce a Deployment's JSON to a DeploymentInfo."""
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    replicas = spec.get("replicas")
    return DeploymentInfo(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        uid=str(meta.get("uid", "")),
        # The API defaults spec.replicas to 1 on create; absent can only mean a bare object in a test.
        replicas=int(replicas) if isinstance(replicas, int) else 1,
        ready=int(status.get("readyReplicas") or 0),
        selector=dict(spec.get("selector") or {}),
        paused=is_paused(obj),
        resource_version=str(meta.get("resourceVersion", "")),
    )


def hpa_info(obj: Mapping[str, Any]) -> HpaInfo:
    """Reduce an HPA's JSON to what it targets."""
    meta = _meta(obj)
    ref = (obj.get("spec") or {}).get("scaleTargetRef") or {}
    return HpaInfo(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        target_kind=str(ref.get("kind", "")),
        target_name=str(ref.get("name", "")),
    )


def _identity(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj


class Snapshots:
    """GPUPools, Deployments, Pods and HPAs of the watched namespaces (all when `namespace` is None)."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str | None = None,
        gateway_namespace: str | None = None,
        gateway_selector: str | None = None,
        resync_seconds: float = 300.0,
        on_change: Callable[[str, str, Key], None] | None = None,
    ) -> None:
        custom = client.CustomObjectsApi(api)
        apps = client.AppsV1Api(api)
        core = client.CoreV1Api(api)
        hpa = client.AutoscalingV2Api(api)

        def notify(kind: str) -> Callable[[str, Key], None]:
            return lambda event, key: on_change(kind, event, key) if on_change is not None else None

        def scoped(all_call: Callable[..., Any], ns_call: Callable[..., Any], ns: str | None) -> Callable[..., Any]:
            if ns is None:
                return all_call
            return lambda **kw: ns_call(ns, **kw)

        if namespace is None:
            pools_call: Callable[..., Any] = lambda **kw: custom.list_cluster_custom_object(  # noqa: E731
                API_GROUP, API_VERSION, PLURAL, **kw
            )
        else:
            pools_call = lambda **kw: custom.list_namespaced_custom_object(  # noqa: E731
                API_GROUP, API_VERSION, namespace, PLURAL, **kw
            )
        self.pools: Watched[Mapping[str, Any]] = Watched(
            "gpupools", pools_call, _identity, resync_seconds=resync_seconds, on_change=notify("gpupools")
        )
        self.deployments: Watched[DeploymentInfo] = Watched(
            "deployments",
            scoped(apps.list_deployment_for_all_namespaces, apps.list_namespaced_deployment, namespace),
            deployment_info,
            resync_seconds=resync_seconds,
            on_change=notify("deployments"),
        )
        self.pods: Watched[PodInfo] = Watched(
            "pods",
            scoped(core.list_pod_for_all_namespaces, core.list_namespaced_pod, namespace),
            pod_info,
            resync_seconds=resync_seconds,
            on_change=notify("pods"),
        )
        self.hpas: Watched[HpaInfo] = Watched(
            "horizontalpodautoscalers",
            scoped(
                hpa.list_horizontal_pod_autoscaler_for_all_namespaces,
                hpa.list_namespaced_horizontal_pod_autoscaler,
                namespace,
            ),
            hpa_info,
            resync_seconds=resync_seconds,
            on_change=notify("hpas"),
        )
        self._index: dict[str, list[PodInfo]] = {}
        self._index_version = -1
        self._matches: dict[tuple[str, str, str], list[PodInfo]] = {}
        self.gateway_pods: Watched[PodInfo] | None = None
        if gateway_selector:
            self.gateway_pods = Watched(
                "gateway pods",
                scoped(core.list_pod_for_all_namespaces, core.list_namespaced_pod, gateway_namespace),
                pod_info,
                label_selector=gateway_selector,
                resync_seconds=resync_seconds,
            )

    @property
    def all(self) -> list[Watched[Any]]:
        """Every watched kind."""
        kinds: list[Watched[Any]] = [self.pools, self.deployments, self.pods, self.hpas]
        if self.gateway_pods is not None:
            kinds.append(self.gateway_pods)
        return kinds

    def synced(self) -> bool:
        """Whether every kind has been listed at least once."""
        return all(w.synced.is_set() for w in self.all)

    def errors(self) -> dict[str, str]:
        """The last list/watch error of each kind that has one."""
        return {w.kind: w.last_error for w in self.all if w.last_error}

    def stale(self, max_seconds: float) -> str | None:
        """Why the caches cannot be trusted now (a kind failing to list or watch for longer than
        `max_seconds`, so changes may have been missed), or None."""
        now = time.monotonic()
        for w in self.all:
            if w.failing_since is not None and now - w.failing_since > max_seconds:
                failing = now - w.failing_since
                return f"the {w.kind} cache is stale: list/watch failing for {failing:.0f} s ({w.last_error})"
        return None

    async def wait_synced(self, timeout: float, *, give_up_on_refusal: bool = False) -> bool:
        """Wait until every kind has been listed once; False on timeout (or, if asked, once the API server
        has refused a list outright: 401, 403 or 404 do not heal by waiting).

        A refusal gives up once every kind's first list has been answered (listed or failed), or at most
        `REFUSAL_GRACE_SECONDS` after the first refusal: the caller then names every refused kind at once,
        not whichever was refused first (an operator mending RBAC would otherwise meet them one by one).
        """
        deadline = time.monotonic() + timeout
        refused_at: float | None = None
        while not self.synced():
            now = time.monotonic()
            if now > deadline:
                return False
            if give_up_on_refusal:
                if refused_at is None and any(e.startswith(_REFUSALS) for e in self.errors().values()):
                    refused_at = now
                answered = all(w.synced.is_set() or w.last_error for w in self.all)
                if refused_at is not None and (answered or now - refused_at > REFUSAL_GRACE_SECONDS):
                    return False
            await asyncio.sleep(0.05)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Keep every kind listed and watched until `stop` is set."""
        tasks = [asyncio.create_task(w.run(stop), name=f"watch {w.kind}") for w in self.all]
        await stop.wait()
        for w in self.all:
            w.shutdown()
        await asyncio.gather(*tasks, return_exceptions=True)

    def pods_of(self, deployment: DeploymentInfo) -> list[PodInfo]:
        """The pods the Deployment's selector matches in its namespace, sorted by name (memoised until the
        pods change: a pass asks for each Deployment's pods several times)."""
        if self._index_version != self.pods.version:
            index: dict[str, list[PodInfo]] = {}
            for (ns, _), pod in sorted(self.pods.items.items()):
                index.setdefault(ns, []).append(pod)
            self._index, self._index_version = index, self.pods.version
            self._matches.clear()
        key = (deployment.namespace, deployment.name, deployment.resource_version)
        found = self._matches.get(key)
        if found is None:
            found = [
                p for p in self._index.get(deployment.namespace, ()) if selector_matches(deployment.selector, p.labels)
            ]
            self._matches[key] = found
        return list(found)
