"""Benchmark: one reconcile pass over many pools against a real API server, and the daemon's memory.

    python -m controller.daemon.bench                    # starts the e2e cluster (e2e/cluster) itself
    python -m controller.daemon.bench --kubeconfig K     # an existing cluster (creates a namespace)

Creates `--pools` GPUPools (default 200), each with its Deployment of 1 to 4 GPU pods on fake kwok nodes,
starts the real daemon parts in this process (snapshots synced by list+watch, demand poller, status
writer), then times `--runs` passes (default 7) and prints the median, the first pass (which writes every
status) and the resident memory. Pools read metrics from a loopback address that refuses, so no traffic
leaves 127.0.0.0/8 and the pass measures the controller, not the network. --dry-run passes: nothing is
patched, as a steady state where no pool changes its replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient

from controller.daemon.app import Daemon
from controller.daemon.settings import Settings
from controller.kube.client import api_client, request_json

__all__ = ["main", "rss_mb"]

_NO_METRICS = {"source": "prometheus", "prometheus": {"url": "http://127.0.0.1:9"}}


def rss_mb() -> float:
    """Resident memory of this process now, in MB (from /proc; the peak from getrusage elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def _cluster(kubeconfig: str | None) -> Iterator[str]:
    if kubeconfig is not None:
        yield kubeconfig
        return
    # The e2e cluster lives in the repository's test tree, not in the installed package.
    cluster_module: Any = importlib.import_module("e2e.cluster")
    with cluster_module.LocalCluster() as cluster:
        yield str(cluster.kubeconfig)


def _populate(api: ApiClient, namespace: str, pools: int) -> int:
    """Namespace, nodes, CRD, Deployments with 1-4 pods and their GPUPools; returns the pod count."""
    create_gpu_node = importlib.import_module("e2e.cluster").create_gpu_node
    importlib.import_module("e2e.manifests").install_crds(api)
    request_json(api, "POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}})
    pods = 0
    for n in range(0, pools * 4, 400):
        create_gpu_node(api, f"{namespace}-gpu-{n // 400}", 400)
    for i in range(pools):
        replicas = 1 + i % 4
        pods += replicas
        name = f"vllm-{i:03d}"
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "containers": [
                            {"name": "vllm", "image": "vllm", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
                        ]
                    },
                },
            },
        }
        request_json(api, "POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", body=deployment)
        pool = {
            "apiVersion": "ebbtide.dev/v1alpha1",
            "kind": "GPUPool",
            "metadata": {"name": f"pool-{i:03d}"},
            "spec": {"target": {"deployment": name, "maxReplicas": 4, "minReplicas": 1}, "metrics": _NO_METRICS},
        }
        request_json(api, "POST", f"/apis/ebbtide.dev/v1alpha1/namespaces/{namespace}/gpupools", body=pool)
    return pods


async def _measure(kubeconfig: str, namespace: str, pods: int, runs: int, profile: bool) -> dict[str, Any]:
    settings = Settings(
        kubeconfig=kubeconfig,
        namespace=namespace,
        dry_run=True,
        once=False,
        tick_seconds=5.0,
        log_format="json",
        log_level="warning",
        metrics_addr=None,
        leader_elect=False,
        lease_name="ebbtide-bench",
        lease_namespace=namespace,
        identity="bench",
        gateway_namespace=None,
        gateway_selector="",
        gateway_port=8080,
        gateway_urls=(),
    )
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=24))  # as the daemon's main does
    daemon = Daemon(settings)
    await daemon.start()
    try:
        started = time.monotonic()
        while True:
            synced = daemon.snapshots.synced()
            seen = len(daemon.snapshots.pods.items)
            if synced and seen >= pods and len(daemon.snapshots.pools.items) >= 1:
                break
            if time.monotonic() - started > 120:
                raise SystemExit(f"caches did not fill within 120 s ({seen} of {pods} pods)")
            await asyncio.sleep(0.1)
        sync_seconds = time.monotonic() - started
        first = time.perf_counter()
        result = daemon.run_pass()
        first_seconds = time.perf_counter() - first
        await daemon.status_writer.flush(120)
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            daemon.run_pass()
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            daemon.run_pass()
            times.append(time.perf_counter() - t0)
            await asyncio.sleep(0.2)  # let the background tasks run between passes, as the tick does
        return {
            "pools": result.pools,
            "pods": len(daemon.snapshots.pods.items),
            "failed": len(result.failed),
            "cache_sync_seconds": round(sync_seconds, 2),
            "first_pass_seconds": round(first_seconds, 4),
            "median_pass_seconds": round(statistics.median(times), 4),
            "passes": [round(t, 4) for t in times],
            "status_writes": daemon.status_writer.written,
            "rss_mb": round(rss_mb(), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    finally:
        await daemon.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its numbers (JSON with --json)."""
    parser = argparse.ArgumentParser(prog="python -m controller.daemon.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=None, help="an existing cluster (default: start the e2e cluster)")
    parser.add_argument("--pools", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--profile", action="store_true", help="print a profile of one pass to stderr")
    args = parser.parse_args(argv)
    if args.pools < 1 or args.runs < 1:
        print("--pools and --runs must be at least 1", file=sys.stderr)
        return 2
    with _cluster(args.kubeconfig) as kubeconfig:
        namespace = f"ebbtide-bench-{uuid.uuid4().hex[:6]}"
        api = api_client(kubeconfig)
        pods = _populate(api, namespace, args.pools)
        try:
            numbers = asyncio.run(_measure(kubeconfig, namespace, pods, args.runs, args.profile))
        finally:
            request_json(api, "DELETE", f"/api/v1/namespaces/{namespace}")
            api.close()  # type: ignore[no-untyped-call]
    if args.json:
        print(json.dumps(numbers))
    else:
        n = numbers
        print(
            f"{n['pools']} pools, {n['pods']} pods: one pass median {n['median_pass_seconds'] * 1000:.1f} ms "
            f"over {args.runs} runs (first pass, writing every status: {n['first_pass_seconds'] * 1000:.1f} ms); "
            f"caches synced in {n['cache_sync_seconds']} s; RSS {n['rss_mb']} MB (peak {n['peak_rss_mb']} MB)"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
