"""Cluster mode: the gateway's pools, endpoints and provider keys from the Kubernetes API.

:func:`follow` lists and then watches GPUPools, Deployments and Pods (in every namespace,
or in ``--namespace`` only), as raw JSON through the official client run in threads
(``asyncio.to_thread``), and keeps the :class:`~gateway.directory.PoolDirectory` current:
each pool's endpoints are the Ready, non-terminating pods that its target Deployment's
selector matches, at ``podIP:target.port`` (the controller's discovery:
controller.kube.pods; never a Service's ClusterIP, never EndpointSlices, which refuse the
loopback pod IPs of the e2e cluster). Pods that exist but are not Ready yet are passed as
``starting`` (their cold start counts from when they were scheduled). ``status.fallbackOpen``
(absent: open) says whether the controller let the fallback take traffic. Provider keys
come from the Secrets that ``apiKeySecretRef`` names (read one by one, never listed, and
re-read every minute), or from ``apiKeyEnv`` / ``apiKeyFile``.

A failed list or watch is logged and retried with backoff; until it recovers the pools
keep their last known endpoints (no data is not zero). A GPUPool that stops validating
keeps its last valid spec, with a warning naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from kubernetes import client, config
from kubernetes.watch import watch as _kube_watch

from controller.kube.pods import PodInfo, pod_info, ready_endpoints, selector_matches
from controller.validate import validate_documents
from gateway.config import ConfigError, provider_keys
from gateway.directory import PoolDirectory
from policies.spec import API_GROUP, API_VERSION, PLURAL, GPUPool

__all__ = ["ClusterFollower", "api_client", "follow"]

_LOG = logging.getLogger("ebbtide.gateway.cluster")
# The client's own splitter of a watch's chunked body into lines (untyped).
_iter_lines: Callable[[Any], Any] = _kube_watch.iter_resp_lines
Key = tuple[str, str]
# The API server ends a watch after this long; the next one resumes from the last resourceVersion.
_WATCH_SECONDS = 30
_SECRET_REFRESH_SECONDS = 60.0
_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
_LIVE_PHASES = frozenset({"Pending", "Running", ""})


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client for the kubeconfig at ``kubeconfig``, or the pod's service account when None."""
    if kubeconfig is not None:
        load_file: Any = config.new_client_from_config  # untyped in the client
        api: client.ApiClient = load_file(config_file=kubeconfig)
        return api
    configuration = client.Configuration()
    load: Any = config.load_incluster_config  # untyped in the client
    load(client_configuration=configuration)
    return client.ApiClient(configuration)


@dataclass
class _Pool:
    pool: GPUPool
    fallback_open: bool


@dataclass
class _Watched:
    """One kind of object, listed then watched into ``items``."""

    name: str
    list_call: Callable[..., Any]
    parse: Callable[[Mapping[str, Any], Any], Any]
    """(object JSON, previous value or None) -> value to keep, or None to drop it."""
    items: dict[Key, Any] = field(default_factory=dict)
    listed: bool = False


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _parse_pool(obj: Mapping[str, Any], previous: _Pool | None) -> _Pool | None:
    status = obj.get("status")
    fallback_open = (
        not isinstance(status, dict) or status.get("fallbackOpen") is not False
    )  # absent or not a bool: open
    pools, problems = validate_documents([dict(obj)])
    if pools:
        return _Pool(pools[0], fallback_open)
    ns, name = _key(obj)
    detail = "; ".join(f"{p.path or '(top)'}: {p.message}" for p in problems[:5])
    keeps = "keeps its last valid spec" if previous is not None else "is not served"
    _LOG.warning("GPUPool %s/%s is invalid and %s: %s", ns, name, keeps, detail)
    return None if previous is None else _Pool(previous.pool, fallback_open)


def _parse_deployment(obj: Mapping[str, Any], previous: Any) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    selector = spec.get("selector")
    return dict(selector) if isinstance(selector, dict) else {}


def _parse_pod(obj: Mapping[str, Any], previous: Any) -> PodInfo:
    return pod_info(obj)


class ClusterFollower:
    """Keeps a PoolDirectory equal to what the API says; :meth:`run` until cancelled."""

    def __init__(
        self,
        directory: PoolDirectory,
        api: client.ApiClient,
        namespace: str | None = None,
        *,
        watch_seconds: int = _WATCH_SECONDS,
        secret_refresh_seconds: float = _SECRET_REFRESH_SECONDS,
    ) -> None:
        self.directory = directory
        self.namespace = namespace
        self._watch_seconds = watch_seconds
        self._secret_refresh = secret_refresh_seconds
        self._core = client.CoreV1Api(api)
        custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
        pools: Callable[..., Any]
        deployments: Callable[..., Any]
        pods: Callable[..., Any]
        if namespace is None:
            pools = partial(custom.list_cluster_custom_object, API_GROUP, API_VERSION, PLURAL)
            deployments, pods = apps.list_deployment_for_all_namespaces, self._core.list_pod_for_all_namespaces
        else:
            pools = partial(custom.list_namespaced_custom_object, API_GROUP, API_VERSION, namespace, PLURAL)
            deployments = partial(apps.list_namespaced_deployment, namespace)
            pods = partial(self._core.list_namespaced_pod, namespace)
        self._pools = _Watched("GPUPools", pools, _parse_pool)
        self._deployments = _Watched("Deployments", deployments, _parse_deployment)
        self._pods = _Watched("Pods", pods, _parse_pod)
        self._secrets: dict[Key, dict[str, str] | None] = {}
        self._secrets_read_at = 0.0
        self._applied: dict[Key, tuple[Any, ...]] = {}
        self._dirty = asyncio.Event()

    async def run(self) -> None:
        """List and watch every kind and apply changes, until cancelled."""
        watchers = [asyncio.create_task(self._follow(w)) for w in (self._pools, self._deployments, self._pods)]
        try:
            while True:
                with contextlib.suppress(TimeoutError):  # the timeout is the secrets' refresh
                    await asyncio.wait_for(self._dirty.wait(), timeout=self._secret_refresh)
                self._dirty.clear()
                for task in watchers:
                    failure = task.exception() if task.done() and not task.cancelled() else None
                    if failure is not None:
                        raise failure  # a bug, not an API failure (those are retried)
                if all(w.listed for w in (self._pools, self._deployments, self._pods)):
                    await self._apply()
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    # ---- list + watch ----------------------------------------------------------------------

    async def _follow(self, watched: _Watched) -> None:
        failures = 0
        while True:
            try:
                version = await self._list(watched)
                failures = 0
                while True:
                    version = await self._watch(watched, version)
            except _Gone:
                _LOG.info("%s: watch expired; listing again", watched.name)
            except Exception as err:  # API, urllib3 and socket errors, bad JSON: retried
                delay = _BACKOFF_SECONDS[min(failures, len(_BACKOFF_SECONDS) - 1)]
                failures += 1
                _LOG.warning("%s: %s; keeping what is known, retrying in %.0f s", watched.name, _describe(err), delay)
                await asyncio.sleep(delay)

    async def _list(self, watched: _Watched) -> str:
        response = await asyncio.to_thread(watched.list_call, _preload_content=False, _request_timeout=30)
        body = json.loads(response.data)
        fresh: dict[Key, Any] = {}
        for obj in body.get("items") or ():
            value = watched.parse(obj, watched.items.get(_key(obj)))
            if value is not None:
                fresh[_key(obj)] = value
        watched.items = fresh
        watched.listed = True
        self._dirty.set()
        return str((body.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(self, watched: _Watched, version: str) -> str:
        loop = asyncio.get_running_loop()
        response = await asyncio.to_thread(
            watched.list_call, watch=True, resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=self._watch_seconds, _preload_content=False,
            _request_timeout=(10, self._watch_seconds + 30),
        )  # fmt: skip

        def apply(event: Mapping[str, Any]) -> None:
            obj = event.get("object") or {}
            key = _key(obj)
            if event.get("type") == "DELETED":
                watched.items.pop(key, None)
            else:
                value = watched.parse(obj, watched.items.get(key))
                if value is None:
                    watched.items.pop(key, None)
                else:
                    watched.items[key] = value
            self._dirty.set()

        def read() -> str:
            latest = version
            for line in _iter_lines(response):
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise client.ApiException(status=obj.get("code"), reason=str(obj.get("message", ""))[:200])
                latest = str((obj.get("metadata") or {}).get("resourceVersion", latest))
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    loop.call_soon_threadsafe(apply, event)
            return latest

        try:
            return await asyncio.to_thread(read)
        except asyncio.CancelledError:
            # Unblock the reading thread now rather than at the watch's end (urllib3 >= 2.3).
            with contextlib.suppress(Exception):
                response.shutdown()
            raise
        finally:
            response.release_conn()

    # ---- applying --------------------------------------------------------------------------

    async def _apply(self) -> None:
        pools: dict[Key, _Pool] = self._pools.items
        if time.monotonic() - self._secrets_read_at >= self._secret_refresh or self._missing_secrets(pools):
            await self._read_secrets(pools)
        for key in [k for k in self._applied if k not in pools]:
            self.directory.remove_pool(*key)
            del self._applied[key]
            _LOG.info("pool %s/%s removed", *key)
        for key, entry in sorted(pools.items()):
            self._apply_pool(key, entry)
        if not self.directory.synced:
            self.directory.mark_synced()
            _LOG.info("cluster mode synced: %d pools", len(pools))

    def _apply_pool(self, key: Key, entry: _Pool) -> None:
        pool = entry.pool
        namespace = pool.deployment_namespace
        selector = self._deployments.items.get((namespace, pool.spec.target.deployment))
        pods: list[PodInfo] = []
        if selector is not None:
            pods = [
                p for (ns, _), p in self._pods.items.items() if ns == namespace and selector_matches(selector, p.labels)
            ]
        endpoints = ready_endpoints(pods, pool.spec.target.port)
        # Pods that exist but are not Ready yet: their cold start counts from when they were scheduled.
        starting = sorted(
            since
            for p in pods
            if not p.ready and not p.deleting and p.phase in _LIVE_PHASES
            and (since := p.scheduled_at or p.created_at) is not None
        )  # fmt: skip
        keys = self._provider_keys(pool)
        snapshot = (pool, tuple(endpoints), tuple(starting), entry.fallback_open, tuple(sorted(keys.items(), key=str)))
        if self._applied.get(key) == snapshot:
            return
        problems = self.directory.set_pool(
            pool, endpoints, fallback_open=entry.fallback_open, starting=starting, provider_keys=keys
        )
        for problem in problems:
            _LOG.warning("pool %s/%s: %s", key[0], key[1], problem)
        if selector is None:
            _LOG.warning("pool %s/%s: Deployment %s/%s not found; no replica takes its requests",
                         key[0], key[1], namespace, pool.spec.target.deployment)  # fmt: skip
        self._applied[key] = snapshot

    # ---- secrets ---------------------------------------------------------------------------

    def _refs(self, pools: Mapping[Key, _Pool]) -> set[Key]:
        return {
            (key[0], p.api_key_secret_ref.name)
            for key, entry in pools.items()
            for p in entry.pool.spec.fallback.providers
            if p.api_key_secret_ref is not None
        }

    def _missing_secrets(self, pools: Mapping[Key, _Pool]) -> bool:
        return any(ref not in self._secrets for ref in self._refs(pools))

    async def _read_secrets(self, pools: Mapping[Key, _Pool]) -> None:
        fresh: dict[Key, dict[str, str] | None] = {}
        for ns, name in sorted(self._refs(pools)):
            try:
                response: Any = await asyncio.to_thread(
                    self._core.read_namespaced_secret, name, ns, _preload_content=False, _request_timeout=10
                )
                data = json.loads(response.data).get("data") or {}
                fresh[(ns, name)] = {k: _decode(v) for k, v in data.items() if isinstance(v, str)}
            except client.ApiException as err:
                _LOG.warning("Secret %s/%s: cannot read it (%s)", ns, name, err.status)
                fresh[(ns, name)] = self._secrets.get((ns, name))  # a read failure keeps the last key
            except Exception as err:  # urllib3 and socket errors
                _LOG.warning("Secret %s/%s: cannot read it (%s)", ns, name, _describe(err))
                fresh[(ns, name)] = self._secrets.get((ns, name))
        self._secrets = fresh
        self._secrets_read_at = time.monotonic()

    def _provider_keys(self, pool: GPUPool) -> dict[str, str | None]:
        where = f"pool {pool.metadata.namespace}/{pool.metadata.name}"

        def read_secret(namespace: str, name: str, key: str) -> str:
            data = self._secrets.get((namespace, name))
            if data is None or key not in data:
                raise ConfigError(f"Secret {namespace}/{name} has no key {key!r} (or cannot be read)")
            return data[key]

        keys: dict[str, str | None] = {}
        for provider in pool.spec.fallback.providers:
            # provider_keys stops at the first provider without a key; ask it about one at a time.
            fallback = pool.spec.fallback.model_copy(update={"providers": [provider]})
            one = pool.model_copy(update={"spec": pool.spec.model_copy(update={"fallback": fallback})})
            try:
                keys.update(provider_keys(one, read_secret=read_secret))
            except ConfigError as err:
                # The provider stays configured, without a key: it will answer 401, which the logs explain.
                _LOG.warning("%s: provider %r has no API key: %s", where, provider.name, err)
                keys[provider.name] = None
        return keys


def _decode(value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""


def _describe(err: BaseException) -> str:
    if isinstance(err, client.ApiException):
        return f"API error {err.status} {err.reason or ''}".strip()
    return f"{type(err).__name__}: {str(err)[:200]}"


async def follow(directory: PoolDirectory, *, kubeconfig: str | None = None, namespace: str | None = None) -> None:
    """Keep ``directory`` equal to the cluster's GPUPools and their Ready pods, until cancelled;
    :meth:`PoolDirectory.mark_synced` once the first full listing is applied."""
    api = await asyncio.to_thread(api_client, kubeconfig)
    try:
        await ClusterFollower(directory, api, namespace).run()
    finally:
        close: Any = api.close  # untyped in the client
        close()
