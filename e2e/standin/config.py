"""Settings of one stand-in vLLM replica: the knobs of its service model."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StandinConfig"]


@dataclass(frozen=True, slots=True)
class StandinConfig:
    """How a stand-in replica names itself and serves load.

    The service model mirrors vLLM's scheduler in the one way the autoscaler cares
    about: at most ``max_num_seqs`` requests run at once, the rest wait in FIFO order.
    """

    model_name: str = "standin-model"
    """Served model name: the ``model`` field clients send and the ``model_name`` label."""
    max_num_seqs: int = 4
    """Requests running at once (vLLM's ``--max-num-seqs``); the rest wait."""
    tokens_per_second: float = 200.0
    """Decode speed of each running request, tokens per second."""
    output_tokens: int = 16
    """Tokens a request produces before the model "stops" when ``max_tokens`` allows more."""
    max_num_queued_reqs: int | None = None
    """Cap on waiting plus running requests (vLLM's ``--max-num-queued-reqs``); over it, 503."""
    max_model_len: int = 2048
    """Context length reported by ``/v1/models``."""
    kv_cache_tokens: int = 16384
    """KV-cache capacity in tokens; running requests' prompt and output tokens fill it."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be > 0")
        if self.output_tokens < 1:
            raise ValueError("output_tokens must be >= 1")
        if self.max_num_queued_reqs is not None and self.max_num_queued_reqs < 1:
            raise ValueError("max_num_queued_reqs must be >= 1 when set")
        if self.kv_cache_tokens < 1:
            raise ValueError("kv_cache_tokens must be >= 1")
