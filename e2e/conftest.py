"""Fixtures for the e2e tests: a real Kubernetes API server, namespaces and fake GPU nodes.

By default a local control plane (etcd, kube-apiserver, controller-manager,
scheduler, kwok) is started once per session from the binaries that
``e2e/cluster/ensure.sh`` builds. With ``EBBTIDE_E2E_KUBECONFIG`` set, the tests
use that cluster instead (e.g. kind, see e2e/kind/README.md) and only kwok is
started locally, to play the fake GPU nodes. See e2e/cluster/README.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from e2e.cluster import K8sCluster
from e2e.cluster.binaries import BinariesMissingError, bin_dir, find_binaries
from e2e.cluster.local import LocalCluster, random_pod_cidr, start_kwok
from e2e.cluster.nodes import create_gpu_node
from e2e.standin import PodFollower, StandinConfig


def _wait_default_service_account(core: client.CoreV1Api, namespace: str, timeout: float = 30.0) -> None:
    # The API server rejects pods in a namespace until the service-account
    # controller has created its `default` ServiceAccount.
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except client.ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """On a failed test that used the cluster, attach the tail of each component's log.

    The work directory is deleted when the session ends, so in CI this is the
    only trace of what the API server, scheduler or kwok did.
    """
    report: pytest.TestReport = yield
    cluster = getattr(item, "funcargs", {}).get("k8s_cluster")
    if report.failed and isinstance(cluster, K8sCluster):
        for log in sorted(cluster.log_dir.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
            report.sections.append((f"e2e cluster log: {log.name} (last {len(lines)} lines)", "\n".join(lines)))
    return report


_LOG_TAIL_LINES = 25


def _kwok_for_external_cluster() -> Path:
    """kwok from the build cache, else one on PATH (users of kind may have installed it)."""
    try:
        return find_binaries(("kwok",))["kwok"]
    except BinariesMissingError:
        on_path = shutil.which("kwok")
        if on_path is None:
            raise
        return Path(on_path)


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sCluster]:
    """A Kubernetes cluster for the whole session: local control plane, or ``EBBTIDE_E2E_KUBECONFIG``."""
    external = os.environ.get("EBBTIDE_E2E_KUBECONFIG")
    if external:
        kubeconfig = Path(external)
        log_dir = tmp_path_factory.mktemp("kwok-logs")
        kwok = _kwok_for_external_cluster()
        pod_cidr = random_pod_cidr()
        popen, _, _ = start_kwok(kwok, kubeconfig, log_dir, pod_cidr)
        api = config.new_client_from_config(config_file=str(kubeconfig))
        try:
            yield K8sCluster(kubeconfig, api, True, log_dir, bin_dir(), pod_cidr)
        finally:
            api.close()
            popen.terminate()
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                popen.kill()
        return

    cluster = LocalCluster(keep_work_dir=os.environ.get("EBBTIDE_E2E_KEEP") == "1")
    with cluster:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        try:
            yield K8sCluster(cluster.kubeconfig, api, False, cluster.log_dir, bin_dir(), cluster.pod_cidr)
        finally:
            api.close()
            if cluster.keep_work_dir:
                print(f"\ne2e cluster work directory kept: {cluster.work_dir}")


@pytest.fixture
def namespace(k8s_cluster: K8sCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted afterwards (without waiting)."""
    core = client.CoreV1Api(k8s_cluster.api_client)
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"ebbtide.dev/e2e": "true"}}})
    try:
        _wait_default_service_account(core, name)
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture
def gpu_node(k8s_cluster: K8sCluster) -> Iterator[Callable[..., client.V1Node]]:
    """Factory ``gpu_node(name, gpus, **options)`` that creates a Ready fake GPU node.

    Options are those of :func:`e2e.cluster.nodes.gpu_node_manifest`. Nodes are
    cluster-wide, so the factory deletes the ones it made when the test ends.
    """
    made: list[str] = []

    def make(name: str, gpus: int, **options: object) -> client.V1Node:
        made.append(name)
        return create_gpu_node(k8s_cluster.api_client, name, gpus, **options)

    yield make
    core = client.CoreV1Api(k8s_cluster.api_client)
    for name in made:
        try:
            core.delete_node(name)
        except client.ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture
def standin_pods(k8s_cluster: K8sCluster, namespace: str) -> Iterator[Callable[..., PodFollower]]:
    """Factory ``standin_pods(deployment=... | selector=..., port=8000, config=None, **options) -> PodFollower``.

    The follower (e2e/standin/follow.py) is started in the test's namespace and keeps
    a stand-in vLLM replica at each Ready pod's ``podIP:port``; every follower the
    factory made is closed when the test ends. ``options`` are those of
    :class:`PodFollower` (``namespace``, ``poll_interval``).
    """
    made: list[PodFollower] = []

    def follow(
        *,
        deployment: str | None = None,
        selector: str | None = None,
        port: int = 8000,
        config: StandinConfig | None = None,
        **options: Any,
    ) -> PodFollower:
        options.setdefault("namespace", namespace)
        follower = PodFollower(
            k8s_cluster.api_client, port=port, selector=selector, deployment=deployment, config=config, **options
        )
        follower.start()
        made.append(follower)
        return follower

    yield follow
    for follower in reversed(made):
        follower.close()
