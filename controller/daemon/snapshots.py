"""In-memory snapshots of the cluster, kept by list+watch in the background: the tick reads only these.

One `Watched` per resource kind lists the objects, then watches from the list's resourceVersion (with
bookmarks) until the server closes the watch, and watches again from the last version seen; a `410
Gone` (the version is too old) or any error relists after a short back-off, and a full relist every
`resync` seconds corrects whatever a watch may have missed. The kubernetes client is synchronous, so
each call runs in a thread with `_request_timeout`; results come back to the event loop with
`call_soon_threadsafe`, so the snapshots change only on the loop and the tick never sees a half-applied
update. Objects are read as raw JSON (`_preload_content=False`) and reduced to the few fields the
daemon needs, which keeps memory small with many pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from controller.kube.pods import PodInfo, pod_info, selector_matches
from policies.spec import API_GROUP, API_VERSION, PLURAL

__all__ = [
    "PAUSED_ANNOTATION",
    "DeploymentInfo",
    "HpaInfo",
    "Key",
    "Snapshots",
    "Watched",
    "deployment_info",
    "hpa_info",
]

log = logging.getLogger("ebbtide.snapshots")

PAUSED_ANNOTATION = "ebbtide.dev/paused"
"""`"true"` on a GPUPool or its Deployment: decide and report, never patch."""

Key = tuple[str, str]
"""(namespace, name)."""

T = TypeVar("T")

# How long one list may take, and how long the server keeps one watch open before we re-watch.
_LIST_TIMEOUT_SECONDS = 30.0
_WATCH_SECONDS = 60
_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)


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


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


class Watched(Generic[T]):
    """One resource kind, listed and watched into `items` (key -> reduced object)."""

    def __init__(
        self,
        kind: str,
        list_call: Callable[..., Any],
        transform: Callable[[Mapping[str, Any]], T],
        *,
        label_selector: str | None = None,
        resync_seconds: float = 300.0,
        watch_seconds: int = _WATCH_SECONDS,
        on_change: Callable[[str, Key], None] | None = None,
    ) -> None:
        self.kind = kind
        self.items: dict[Key, T] = {}
        self.synced = asyncio.Event()
        self.last_error = ""
        self.listed_at: float | None = None
        """time.monotonic() of the last successful list."""
        self._list_call = list_call
        self._transform = transform
        self._label_selector = label_selector
        self._resync = resync_seconds
        self._watch_seconds = watch_seconds
        self._on_change = on_change
        self._resource_version = ""
        self.version = 0
        """Counts changes, so readers can cache what they derive from `items`."""
        self._response: Any = None
        self._stopping = False

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"_preload_content": False}
        if self._label_selector:
            kwargs["label_selector"] = self._label_selector
        return kwargs

    def _list_blocking(self) -> tuple[dict[Key, T], str]:
        response = self._list_call(**self._kwargs(), _request_timeout=_LIST_TIMEOUT_SECONDS)
        body = json.loads(response.data)
        items: dict[Key, T] = {}
        for obj in body.get("items") or ():
            meta = _meta(obj)
            items[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = self._transform(obj)
        return items, str(_meta(body).get("resourceVersion", ""))

    async def relist(self) -> None:
        """List every object now and replace the snapshot (raises on failure)."""
        items, version = await asyncio.to_thread(self._list_blocking)
        changed = set(items) ^ set(self.items) | {k for k in items if self.items.get(k) != items[k]}
        self.items = items
        self.version += 1
        self._resource_version = version
        self.listed_at = time.monotonic()
        self.last_error = ""
        self.synced.set()
        for key in changed:
            self._notify("RELIST", key)

    def _notify(self, event: str, key: Key) -> None:
        if self._on_change is not None:
            try:
                self._on_change(event, key)
            except Exception:  # a listener's bug must not stop the watch
                log.exception("%s change listener failed", self.kind)

    def _apply(self, event: str, obj: Mapping[str, Any]) -> None:
        meta = _meta(obj)
        version = meta.get("resourceVersion")
        if version:
            self._resource_version = str(version)
        if event == "BOOKMARK":
            return
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event == "DELETED":
            self.items.pop(key, None)
        else:
            self.items[key] = self._transform(obj)
        self.version += 1
        self._notify(event, key)

    def _watch_blocking(self, loop: asyncio.AbstractEventLoop) -> None:
        response = self._list_call(
            **self._kwargs(),
            watch=True,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_seconds,
            _request_timeout=(10, self._watch_seconds + 15),
        )
        self._response = response
        if self._stopping:
            response.release_conn()
            return
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event.get("type", ""), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone(str(obj.get("message", "resource version too old")))
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                loop.call_soon_threadsafe(self._apply, kind, obj)
        finally:
            self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()

    def shutdown(self) -> None:
        """Unblock a watch in progress (from the loop thread) so its thread ends now."""
        self._stopping = True
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()

    async def run(self, stop: asyncio.Event) -> None:
        """List, then watch, until `stop` is set; errors are logged and retried with back-off."""
        loop = asyncio.get_running_loop()
        failures = 0
        need_list = True
        while not stop.is_set():
            try:
                if need_list or (self.listed_at is not None and time.monotonic() - self.listed_at > self._resync):
                    await self.relist()
                    need_list = False
                await asyncio.to_thread(self._watch_blocking, loop)
                failures = 0
            except _Gone as exc:
                log.info("%s watch expired (%s); relisting", self.kind, exc)
                need_list = True
            except Exception as exc:
                if stop.is_set():
                    break
                self.last_error = _describe(exc)
                delay = _BACKOFF_SECONDS[min(failures, len(_BACKOFF_SECONDS) - 1)]
                failures += 1
                need_list = True
                log.warning("%s list/watch failed (%s); retrying in %.1f s", self.kind, self.last_error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, client.ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


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

    async def wait_synced(self, timeout: float) -> bool:
        """Wait until every kind has been listed once; False on timeout."""
        try:
            await asyncio.wait_for(asyncio.gather(*(w.synced.wait() for w in self.all)), timeout)
        except TimeoutError:
            return False
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
