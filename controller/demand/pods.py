"""Source `pods`: scrape /metrics of the target Deployment's Ready pods at their own IPs.

Every pod is read concurrently with the existing vLLM reader (controller/scrape), each within the
pool's scrape timeout; a pod that fails is NoData in the result, and aggregate then makes the whole
read NoData (a partial read is never a smaller queue).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping, Sequence
from typing import ClassVar

import httpx

from controller.kube.pods import PodInfo
from controller.scrape.sample import EngineSample, NoData
from controller.scrape.vllm import scrape_vllm_async
from policies.spec import GPUPoolSpec

__all__ = ["PodsSource", "pod_metrics_urls"]


def _host(ip: str) -> str:
    """An IP as a URL host (IPv6 in brackets)."""
    try:
        return f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    except ValueError:
        return ip


def pod_metrics_urls(spec: GPUPoolSpec, pods: Sequence[PodInfo]) -> dict[str, str]:
    """The /metrics URL of each Ready pod (by name): its own IP, target.port, metrics.path.

    A Ready pod without an IP yet is left out here and still expected by the caller: it reads as
    unreadable rather than as an empty queue.
    """
    return {
        pod.name: f"http://{_host(pod.ip)}:{spec.target.port}{spec.metrics.path}"
        for pod in pods
        if pod.ready and pod.ip
    }


class PodsSource:
    """Reads each pod's vLLM metrics; returns a sample or NoData per pod, never raises."""

    kind: ClassVar[str] = "pods"

    def __init__(self, urls: Mapping[str, str], *, timeout: float, model_name: str | None = None) -> None:
        self.urls = dict(urls)
        self.timeout = timeout
        self.model_name = model_name

    async def _one(self, http: httpx.AsyncClient, url: str) -> EngineSample | NoData:
        try:
            # httpx's timeout bounds each phase; wait_for bounds the whole read (a server that trickles).
            return await asyncio.wait_for(
                scrape_vllm_async(url, client=http, model_name=self.model_name, timeout=self.timeout), self.timeout
            )
        except TimeoutError:
            return NoData(f"scrape of {url} timed out after {self.timeout:g}s")

    async def read(self, http: httpx.AsyncClient) -> dict[str, EngineSample | NoData]:
        """Every pod's reading, concurrently."""
        names = list(self.urls)
        results = await asyncio.gather(*(self._one(http, self.urls[name]) for name in names))
        return dict(zip(names, results, strict=True))
