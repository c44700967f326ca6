"""vLLM's Prometheus metrics for one stand-in replica, with vLLM 0.32/0.33's names and labels.

The series are built with ``prometheus_client`` exactly as vLLM builds them (same metric
names, types, label names, histogram buckets), so the exposition the reader parses has the
same shape as a real server's, including counters' ``_total``/``_created`` samples.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ADMISSION_REASONS", "FINISH_REASONS", "EngineMetrics"]

FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
"""vLLM's ``finished_reason`` label values (``vllm.v1.engine.FinishReason``)."""
ADMISSION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")
"""vLLM's ``reason`` label values on ``vllm:admission_rejections``."""

# vLLM's default buckets (vllm/v1/metrics/buckets.py).
_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


class EngineMetrics:
    """The metric series of one replica (one engine, ``engine="0"``) in its own registry."""

    def __init__(self, model_name: str, engine: str = "0") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name", "engine"]
        values = (model_name, engine)
        reg = self.registry
        self.running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.",
            labels, registry=reg, multiprocess_mode="mostrecent",
        ).labels(*values)  # fmt: skip
        self.waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
            labels, registry=reg, multiprocess_mode="mostrecent",
        ).labels(*values)  # fmt: skip
        self.kv_cache_usage = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
            labels, registry=reg, multiprocess_mode="mostrecent",
        ).labels(*values)  # fmt: skip
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=reg
        ).labels(*values)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=reg
        ).labels(*values)
        success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            [*labels, "finished_reason"], registry=reg,
        )  # fmt: skip
        self.request_success = {reason: success.labels(*values, reason) for reason in FINISH_REASONS}
        rejections = Counter(
            "vllm:admission_rejections",
            "Number of admission attempts rejected by a queue limit, by reason.",
            ["model_name", "reason"], registry=reg,
        )  # fmt: skip
        self.admission_rejections = {reason: rejections.labels(model_name, reason) for reason in ADMISSION_REASONS}
        self.time_to_first_token = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            labels, registry=reg, buckets=_TTFT_BUCKETS,
        ).labels(*values)  # fmt: skip
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
            labels, registry=reg, buckets=_REQUEST_LATENCY_BUCKETS,
        ).labels(*values)  # fmt: skip

    def render(self) -> bytes:
        """The Prometheus text exposition, as vLLM's ``/metrics`` returns it."""
        return generate_latest(self.registry)
