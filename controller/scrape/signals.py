"""The table of engine metric names behind each logical signal Ebbtide reads.

Engines rename metrics between releases; the reader never hard-codes a name.
Each signal lists the exposition *sample* names that carry it, newest first:
the first name that has any sample in a scrape wins, so an engine that still
exports a deprecated alias beside the new name is not counted twice.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["VLLM_SIGNALS", "Aggregation", "Signal", "SignalSource"]


class Signal(enum.Enum):
    """A quantity the controller reasons about, independent of any engine's naming."""

    WAITING = "waiting"
    RUNNING = "running"
    KV_CACHE_USAGE = "kv_cache_usage"
    PROMPT_TOKENS = "prompt_tokens"
    GENERATION_TOKENS = "generation_tokens"
    REQUEST_SUCCESS = "request_success"
    ADMISSION_REJECTIONS = "admission_rejections"


class Aggregation(enum.Enum):
    """How samples of one signal combine across engines and label sets."""

    SUM = "sum"
    """Queue lengths and counters add up across engines (and across reasons)."""
    MEAN = "mean"
    """A per-engine fraction (KV-cache use) averages across engines."""


@dataclass(frozen=True, slots=True)
class SignalSource:
    """Where one signal lives in an engine's exposition and how it aggregates."""

    names: tuple[str, ...]
    """Sample names, newest first (counters carry the exposition's ``_total`` suffix)."""
    aggregation: Aggregation
    required: bool
    """A scrape without this signal is "no data" rather than a zero."""


VLLM_SIGNALS: Mapping[Signal, SignalSource] = MappingProxyType(
    {
        # The queue gauges are what scaling decisions rest on: without them a scrape is no data.
        Signal.WAITING: SignalSource(("vllm:num_requests_waiting",), Aggregation.SUM, required=True),
        Signal.RUNNING: SignalSource(("vllm:num_requests_running",), Aggregation.SUM, required=True),
        # vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc (0.9 era); both are 0..1.
        Signal.KV_CACHE_USAGE: SignalSource(
            ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), Aggregation.MEAN, required=False
        ),
        Signal.PROMPT_TOKENS: SignalSource(("vllm:prompt_tokens_total",), Aggregation.SUM, required=False),
        Signal.GENERATION_TOKENS: SignalSource(("vllm:generation_tokens_total",), Aggregation.SUM, required=False),
        # Labelled by finished_reason (stop, length, abort, error, repetition); summed over all.
        Signal.REQUEST_SUCCESS: SignalSource(("vllm:request_success_total",), Aggregation.SUM, required=False),
        # Frontend admission control (--max-num-queued-reqs and friends, vLLM 0.32+); labelled
        # by model_name and reason only, without an engine label.
        Signal.ADMISSION_REJECTIONS: SignalSource(
            ("vllm:admission_rejections_total",), Aggregation.SUM, required=False
        ),
    }
)
"""vLLM's metric names for each signal, including names from before vLLM 0.9."""
