"""Reading inference engines' metrics: the controller's view of a vLLM server's queue.

``parse_vllm_metrics`` turns a Prometheus exposition into an :class:`EngineSample`;
``scrape_vllm`` fetches and parses one. Anything short of both queue gauges is a
:class:`NoData`, which callers must treat as "hold", never as an empty queue.
"""

from controller.scrape.sample import EngineSample, MetricsReading, NoData
from controller.scrape.signals import VLLM_SIGNALS, Aggregation, Signal, SignalSource
from controller.scrape.vllm import (
    DEFAULT_TIMEOUT_SECONDS,
    parse_vllm_metrics,
    scrape_vllm,
    scrape_vllm_async,
)

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "VLLM_SIGNALS",
    "Aggregation",
    "EngineSample",
    "MetricsReading",
    "NoData",
    "Signal",
    "SignalSource",
    "parse_vllm_metrics",
    "scrape_vllm",
    "scrape_vllm_async",
]
