"""What the serving model is made of: one Ready replica's capacity and the fallback API's.

The replica's and the fallback's parameters (`ReplicaModel`, `FallbackModel`) with their defaults for
an 8B model on one H100 (sources cited below), and the per-request route codes of the engine's route
array (`RouteCode`). The engine that serves requests with them is `controller.sim.engine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_DECODE_TPS",
    "DEFAULT_FALLBACK_TTFT",
    "DEFAULT_MAX_NUM_SEQS",
    "DEFAULT_PREFILL_TPS",
    "DEFAULT_SEQUENCE_TPS",
    "FallbackModel",
    "ReplicaModel",
    "RouteCode",
]

FloatArray = npt.NDArray[np.float64]

# Defaults for an 8B model (Llama-3.1-8B class, BF16) on one H100-80GB with vLLM >= 0.6, rounded
# down from published benchmarks (no measurement of ours): the vLLM team's "vLLM v0.6.0: 2.7x
# Throughput Improvement and 5x Latency Reduction" (blog.vllm.ai/2024/09/05/perf-update.html, Llama 3
# 8B on 1xH100, ShareGPT; TPOT in the low tens of milliseconds at 32 QPS) and Lambda's
# LambdaLabsML/vllm-benchmark report (H100-80GB-SXM, Llama 3.1 8B, thousands of output tokens/s at
# high concurrency). Prefill of an 8B model runs compute-bound at roughly 10-20k tokens/s on an H100;
# we take the low end. `max_num_seqs` is vLLM's default batch limit (256).
DEFAULT_PREFILL_TPS = 10_000.0
DEFAULT_DECODE_TPS = 2_500.0
DEFAULT_SEQUENCE_TPS = 60.0
DEFAULT_MAX_NUM_SEQS = 256
# A mid-tier API's typical time to first token.
DEFAULT_FALLBACK_TTFT = 0.8


@dataclass(frozen=True, slots=True)
class ReplicaModel:
    """What one Ready replica can do."""

    prefill_tokens_per_second: float = DEFAULT_PREFILL_TPS
    """Prompt tokens per second when the replica does nothing else."""
    decode_tokens_per_second: float = DEFAULT_DECODE_TPS
    """Generated tokens per second over the whole running batch, at saturation."""
    sequence_tokens_per_second: float = DEFAULT_SEQUENCE_TPS
    """Generated tokens per second of one sequence in a loaded batch (1 / time per output token)."""
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    """Largest running batch (vLLM's --max-num-seqs)."""

    def __post_init__(self) -> None:
        for name in ("prefill_tokens_per_second", "decode_tokens_per_second", "sequence_tokens_per_second"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")

    @property
    def effective_decode_tps(self) -> float:
        """Batch decode throughput, limited by the batch size times one sequence's speed."""
        return min(self.decode_tokens_per_second, self.max_num_seqs * self.sequence_tokens_per_second)

    def work_seconds(self, input_tokens: npt.NDArray[np.int64], output_tokens: npt.NDArray[np.int64]) -> FloatArray:
        """Replica-seconds of full throughput each request needs."""
        return input_tokens / self.prefill_tokens_per_second + output_tokens / self.effective_decode_tps

    @classmethod
    def unlimited(cls) -> ReplicaModel:
        """A replica with (for all practical purposes) infinite capacity, for tests and what-ifs."""
        return cls(1e18, 1e18, 1e18, 1 << 30)


@dataclass(frozen=True, slots=True)
class FallbackModel:
    """The simulated fallback API."""

    ttft_seconds: float = DEFAULT_FALLBACK_TTFT
    """Time to first token at the fallback."""
    tokens_per_second: float = 80.0
    """Streaming speed of one response at the fallback, for its in-flight count."""


class RouteCode:
    """Per-request outcome codes in the engine's int8 route array."""

    PENDING = 0
    GPU = 1
    FALLBACK = 2
    REJECT = 3
