"""The pool's vLLM replicas as the gateway sees them: address, in-flight work and the scraped queue.

The gateway's own in-flight counts are exact and immediate; vLLM's `num_requests_waiting` and
`num_requests_running` gauges, scraped about once a second, add what other gateway replicas (or other
clients) put on the same engine. Parsing uses the controller's reader (`parse_vllm_metrics`, built on
prometheus_client's parser) on the queue-gauge lines only, since a real vLLM's exposition is large and
the scrape shares the event loop with requests.
"""

from __future__ import annotations

import asyncio

import aiohttp

from controller.scrape.sample import EngineSample
from controller.scrape.vllm import parse_vllm_metrics

__all__ = ["Endpoint", "queue_lines", "scrape_endpoint"]

_QUEUE_PREFIXES = ("vllm:num_requests_waiting", "vllm:num_requests_running")
_ACCEPT = {"Accept": "text/plain;version=0.0.4;q=1.0, */*;q=0.1"}
_FAILED_ENDPOINT_SECONDS = 5.0
"""An endpoint that refused a connection takes no new request for this long (or until a good scrape)."""


def queue_lines(text: str) -> str:
    """The exposition lines (samples and their TYPE/HELP) of the two queue gauges, nothing else."""
    keep = []
    for line in text.splitlines():
        body = line[7:] if line.startswith(("# TYPE ", "# HELP ")) else line
        if body.startswith(_QUEUE_PREFIXES):
            keep.append(line)
    keep.append("")
    return "\n".join(keep)


class Endpoint:
    """One replica (a Ready pod, or a static address) and what the gateway knows about its load."""

    __slots__ = (
        "address",
        "base_url",
        "chat_url",
        "completions_url",
        "down_since",
        "failed_until",
        "in_flight",
        "in_flight_at_scrape",
        "metrics_url",
        "name",
        "priority_ok",
        "ready",
        "scrape_ok",
        "scraped_at",
        "scraped_running",
        "scraped_waiting",
    )

    def __init__(self, name: str, address: str, metrics_path: str = "/metrics", *, ready: bool = True) -> None:
        self.name = name
        self.address = address
        host, _, port = address.rpartition(":")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 pod IP, written bare by `ready_endpoints`
        self.base_url = f"http://{host}:{port}"
        self.chat_url = self.base_url + "/v1/chat/completions"
        self.completions_url = self.base_url + "/v1/completions"
        self.metrics_url = self.base_url + metrics_path
        self.ready = ready
        """Takes requests: a Ready pod (cluster mode), or an address whose last scrape answered (static)."""
        self.in_flight = 0
        self.in_flight_at_scrape = 0
        self.scraped_waiting = 0
        self.scraped_running = 0
        self.scraped_at: float | None = None
        self.scrape_ok = False
        self.down_since: float | None = None
        self.failed_until = 0.0
        self.priority_ok: bool | None = None
        """Whether the engine accepts vLLM's request `priority` (None until checked)."""

    def routable(self, now: float) -> bool:
        """Whether a new request may go here now."""
        return self.ready and now >= self.failed_until

    @property
    def others(self) -> int:
        """Requests on the engine that are not this gateway's (other gateway replicas, other clients)."""
        if not self.scrape_ok:
            return 0
        return max(self.scraped_waiting + self.scraped_running - self.in_flight_at_scrape, 0)

    def connect_failed(self, now: float) -> None:
        """A connection to it failed: take it out of rotation for a few seconds."""
        self.failed_until = now + _FAILED_ENDPOINT_SECONDS

    def record_scrape(self, sample: EngineSample | None, now: float, in_flight_before: int | None = None) -> None:
        """Store a scrape's result (None: the scrape failed); `in_flight_before` is this gateway's count
        when the scrape was sent.

        The engine's gauges are from some moment during the scrape. A request of ours that ended before
        that moment is in neither the gauges nor `in_flight` at the end, but one that ended after it is
        in the gauges and no longer in `in_flight`: counting against the end alone would take it for
        another client's (a ghost that, at the pool's mean request size, can look like seconds of
        queue and spill a whole burst). The larger of the two counts leaves no ghost; a request of ours
        sent during the scrape is then under-counted as ours, which errs on the GPUs' side for one scrape.
        """
        if sample is None:
            self.scrape_ok = False
            if self.down_since is None:
                self.down_since = now
            return
        self.scrape_ok = True
        self.down_since = None
        self.failed_until = 0.0
        self.scraped_waiting = sample.waiting
        self.scraped_running = sample.running
        self.scraped_at = now
        self.in_flight_at_scrape = max(self.in_flight, in_flight_before or 0)


async def scrape_endpoint(
    session: aiohttp.ClientSession, endpoint: Endpoint, *, timeout: float, model_name: str | None
) -> EngineSample | None:
    """GET the endpoint's /metrics and read its queue; None when it does not answer or has no queue gauges."""
    try:
        async with asyncio.timeout(timeout):
            async with session.get(endpoint.metrics_url, headers=_ACCEPT) as response:
                if response.status != 200:
                    return None
                text = await response.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None
    reading = parse_vllm_metrics(queue_lines(text), model_name)
    if not isinstance(reading, EngineSample) and model_name is not None:
        # The served model's label may differ from the spec's idea of it; the engine's total still counts.
        reading = parse_vllm_metrics(queue_lines(text), None)
    return reading if isinstance(reading, EngineSample) else None
