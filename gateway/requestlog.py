"""The requests this gateway process finished in the last hour, for the controller's replay.

The controller replays the last hour's requests through every replica count (`policies.replay`); only
the gateway sees each request. Each finished request (served on the GPUs or at a fallback, or left by
its client midway, with the tokens it had got) is kept with its pool, its arrival and its tokens, never
its content, and served as JSON:

    GET /ebbtide/requests?after=N[&limit=M]

    {"instance": "<this process>", "since": <epoch s>, "next": <seq>, "more": false,
     "requests": [[seq, namespace, pool, arrived_at, prompt_tokens, completion_tokens], ...]}

Sequence numbers count up from 1 in finishing order; a reader passes the last `next` as `after` and
gets what finished since. `instance` changes when the process restarts (its numbers start again), and
`since` is the moment from which the log is complete: the process's start, or the oldest moment still
kept once the log has trimmed (by age, `keep_seconds`, and by size, `max_entries`).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "RequestLog"]

KEEP_SECONDS = 3900.0
"""An hour and the replay's lag: what the controller needs to rebuild its replay after a restart."""
MAX_ENTRIES = 500_000
"""About 140 requests a second for the hour; beyond, the oldest go first (and `since` says so)."""
DEFAULT_PAGE = 5_000
"""Rows per answer: building and encoding one holds the gateway's event loop 2-20 ms (measured on a full log)."""
MAX_PAGE = 50_000


class RequestLog:
    """A bounded log of finished requests, read by sequence number."""

    def __init__(
        self,
        *,
        keep_seconds: float = KEEP_SECONDS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keep_seconds > 0 or max_entries < 1:
            raise ValueError("keep_seconds must be > 0 and max_entries >= 1")
        self.keep_seconds = keep_seconds
        self.max_entries = max_entries
        self.clock = clock
        self.instance = uuid.uuid4().hex
        self.since = clock()
        self._seq = 0
        # (seq, finished_at, namespace, pool, arrived_at, prompt, completion)
        self._entries: deque[tuple[int, float, str, str, float, int, int]] = deque()

    def record(self, namespace: str, pool: str, arrived_at: float, prompt_tokens: int, completion_tokens: int) -> None:
        """Keep one finished request (arrived_at in epoch seconds)."""
        now = self.clock()
        self._seq += 1
        self._entries.append(
            (self._seq, now, namespace, pool, arrived_at, max(prompt_tokens, 0), max(completion_tokens, 0))
        )
        self._trim(now)

    def _trim(self, now: float) -> None:
        entries = self._entries
        cutoff = now - self.keep_seconds
        while entries and (len(entries) > self.max_entries or entries[0][1] < cutoff):
            _, finished_at, *_ = entries.popleft()
            # What remains is complete only for requests that arrived after the one dropped finished.
            self.since = max(self.since, finished_at)

    def page(self, after: int, limit: int = DEFAULT_PAGE) -> dict[str, Any]:
        """The requests finished after sequence number `after`, at most `limit` of them."""
        if after < 0 or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"need after >= 0 and 1 <= limit <= {MAX_PAGE}")
        self._trim(self.clock())
        entries = self._entries
        first = entries[0][0] if entries else self._seq + 1
        start = max(after + 1 - first, 0)
        stop = min(start + limit, len(entries))
        if start >= stop:
            chosen: list[tuple[int, float, str, str, float, int, int]] = []
        elif len(entries) - start <= start:
            # A reader keeping up asks for the newest few: walk from that end (a deque indexes slowly
            # in its middle).
            chosen = list(itertools.islice(reversed(entries), len(entries) - stop, len(entries) - start))
            chosen.reverse()
        else:
            chosen = list(itertools.islice(entries, start, stop))
        rows = [
            [seq, namespace, pool, arrived_at, prompt, completion]
            for seq, _, namespace, pool, arrived_at, prompt, completion in chosen
        ]
        # With nothing to return, everything up to now has been seen (or trimmed).
        last = chosen[-1][0] if chosen else self._seq
        return {
            "instance": self.instance,
            "since": self.since,
            "next": last,
            "more": last < self._seq,
            "requests": rows,
        }
