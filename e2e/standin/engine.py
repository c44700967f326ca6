"""The stand-in's service model: a FIFO scheduler with ``max_num_seqs`` running slots.

Requests wait until a slot frees, then decode at ``tokens_per_second``. The queue gauges
are read from this state at scrape time, so ``/metrics`` is always current.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from e2e.standin.config import StandinConfig
from e2e.standin.metrics import EngineMetrics

__all__ = ["WORDS", "Engine", "QueueFull", "Sequence", "count_tokens"]

WORDS = (" ebb", " and", " flow", " of", " the", " tide", " lifts", " every", " boat")
"""Output "tokens": one word each, so token counts are easy to check."""


def count_tokens(text: str) -> int:
    """The stand-in's tokenizer: one token per whitespace-separated word (at least one)."""
    return max(1, len(text.split()))


class QueueFull(Exception):
    """Raised on admission when ``max_num_queued_reqs`` would be exceeded (vLLM answers 503)."""


@dataclass(eq=False)
class Sequence:
    """One admitted request: its sizes, timings and progress."""

    prompt_tokens: int
    max_tokens: int
    arrival: float
    generated: int = 0
    finish_reason: str | None = None
    _slot: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Engine:
    """One replica's scheduler and decoder, reporting into its :class:`EngineMetrics`."""

    def __init__(
        self, config: StandinConfig, metrics: EngineMetrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self._running: set[Sequence] = set()
        self._waiting: deque[Sequence] = deque()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._reported: dict[str, float] = {}

    @property
    def num_running(self) -> int:
        """Requests holding a slot."""
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        """Requests admitted but not yet scheduled."""
        return len(self._waiting)

    def kv_cache_usage(self) -> float:
        """Fraction of the KV cache held by running requests' prompt and output tokens."""
        used = sum(seq.prompt_tokens + seq.generated for seq in self._running)
        return min(1.0, used / self.config.kv_cache_tokens)

    def refresh_gauges(self) -> None:
        """Copy the scheduler's state into the gauges (called before each scrape), or the reported values."""
        reported = self._reported
        self.metrics.running.set(reported.get("running", self.num_running))
        self.metrics.waiting.set(reported.get("waiting", self.num_waiting))
        self.metrics.kv_cache_usage.set(reported.get("kv_cache_usage", self.kv_cache_usage()))

    def report(
        self, *, waiting: int | None = None, running: int | None = None, kv_cache_usage: float | None = None
    ) -> None:
        """Show these queue gauges on ``/metrics`` instead of the scheduler's own (None keeps the real one).

        A test uses it to stage a queue without holding requests open; the
        counters (tokens, requests) still count only what was really served.
        Replaces any earlier :meth:`report`; :meth:`report` with no argument ends it.
        """
        if waiting is not None and waiting < 0:
            raise ValueError(f"waiting must be >= 0, got {waiting}")
        if running is not None and running < 0:
            raise ValueError(f"running must be >= 0, got {running}")
        if kv_cache_usage is not None and not 0.0 <= kv_cache_usage <= 1.0:
            raise ValueError(f"kv_cache_usage must be within [0, 1], got {kv_cache_usage}")
        values = {"waiting": waiting, "running": running, "kv_cache_usage": kv_cache_usage}
        self._reported = {name: float(v) for name, v in values.items() if v is not None}

    def pause(self) -> None:
        """Stop decoding (scheduling goes on): load then holds still for a test to observe."""
        self._resumed.clear()

    def resume(self) -> None:
        """Resume decoding after :meth:`pause`."""
        self._resumed.set()

    @property
    def paused(self) -> bool:
        """Whether decoding is paused."""
        return not self._resumed.is_set()

    def _admit(self) -> None:
        limit = self.config.max_num_queued_reqs
        if limit is not None and self.num_running + self.num_waiting + 1 > limit:
            self.metrics.admission_rejections["max_num_queued_reqs"].inc()
            raise QueueFull

    def _schedule(self) -> None:
        while self._waiting and len(self._running) < self.config.max_num_seqs:
            seq = self._waiting.popleft()
            self._running.add(seq)
            self.metrics.queue_time.observe(self._clock() - seq.arrival)
            self.metrics.prompt_tokens.inc(seq.prompt_tokens)
            seq._slot.set_result(None)

    @asynccontextmanager
    async def request(self, prompt_tokens: int, max_tokens: int | None) -> AsyncIterator[Sequence]:
        """Admit a request and hold a running slot for it until the block exits.

        Raises :class:`QueueFull` at once when the queue limit is hit. Leaving the block
        early (an error, or the client going away) counts the request as ``abort``.
        """
        self._admit()
        wanted = self.config.output_tokens if max_tokens is None else max_tokens
        seq = Sequence(prompt_tokens=prompt_tokens, max_tokens=max(0, wanted), arrival=self._clock())
        self._waiting.append(seq)
        self._schedule()
        try:
            await seq._slot
            yield seq
        finally:
            if seq in self._running:
                self._running.discard(seq)
            else:
                self._waiting.remove(seq)
            self.metrics.request_success[seq.finish_reason or "abort"].inc()
            self._schedule()

    async def decode(self, seq: Sequence) -> AsyncIterator[str]:
        """Yield the request's output tokens at the configured rate, then set its finish reason."""
        interval = 1.0 / self.config.tokens_per_second
        length = min(seq.max_tokens, self.config.output_tokens)
        words = itertools.cycle(WORDS)
        for _ in range(length):
            await asyncio.sleep(interval)
            await self._resumed.wait()
            if seq.generated == 0:
                self.metrics.time_to_first_token.observe(self._clock() - seq.arrival)
            seq.generated += 1
            self.metrics.generation_tokens.inc()
            yield next(words)
        # The model "stops" on its own after output_tokens; a smaller max_tokens cuts it short.
        seq.finish_reason = "length" if seq.max_tokens < self.config.output_tokens else "stop"
