"""The two outcomes of reading an engine's metrics: a sample, or no data (the loop's own `NoData`)."""

from __future__ import annotations

from dataclasses import dataclass

from controller.ports import NoData

__all__ = ["EngineSample", "MetricsReading", "NoData"]


@dataclass(frozen=True, slots=True)
class EngineSample:
    """One scrape of one inference server, summed over its engines.

    Counters are cumulative since the server started; a consumer derives rates from
    two samples. A counter the server does not export (an older engine) is ``None``,
    never ``0``.
    """

    waiting: int
    """Requests queued and not yet scheduled (``vllm:num_requests_waiting``)."""
    running: int
    """Requests in the running batch (``vllm:num_requests_running``)."""
    kv_cache_usage: float | None
    """Mean KV-cache use over engines, 0..1; ``None`` when the server does not export it."""
    prompt_tokens_total: float | None
    generation_tokens_total: float | None
    request_success_total: float | None
    """Finished requests over every ``finished_reason``."""
    admission_rejections_total: float | None
    """Requests refused with 503 by the server's queue limits, over every reason."""
    engines: int
    """Distinct ``engine`` label values seen on the queue gauges (at least 1)."""

    @property
    def in_flight(self) -> int:
        """Requests the server holds: waiting plus running."""
        return self.waiting + self.running


MetricsReading = EngineSample | NoData
"""What a metrics read returns."""
