"""The requests every gateway process finished, pulled for the replay (`policies.replay`).

Each gateway process serves its finished requests at GET /ebbtide/requests?after=N (`gateway/requestlog.py`).
`RequestFeed` keeps one cursor per process: a read asks each endpoint for what finished since the last
read, page by page, and returns every pool's new requests. A process that restarted (a new `instance`)
is read from its start again. A failed read leaves that process's cursor where it was, so the next read
catches up (the gateway keeps an hour); until it does, the poller's replay reports nothing rather than
less. Rows that do not parse are skipped and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from controller.ports import NoData

__all__ = ["FeedRead", "FinishedRequest", "RequestFeed", "parse_page", "requests_url"]

PoolKey = tuple[str, str]

_MAX_PAGES = 20
"""Pages per endpoint and read; the rest comes at the next read."""


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    """One finished request: when it arrived (epoch s) and its tokens."""

    arrived_at: float
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Page:
    instance: str
    since: float
    next: int
    more: bool
    requests: Mapping[PoolKey, list[FinishedRequest]]
    skipped: int


@dataclass(frozen=True, slots=True)
class FeedRead:
    """One read over every endpoint: each pool's new requests, and from when every log is complete."""

    requests: Mapping[PoolKey, list[FinishedRequest]]
    complete_since: float
    """The latest `since` of the processes read: before it, some process's log has gaps."""
    skipped: int = 0
    failure: str | None = None
    """The first endpoint that could not be read, and why (its requests come at a later read)."""


def requests_url(endpoint: str) -> str:
    """The /ebbtide/requests URL of a gateway endpoint given as a base URL or as its /metrics URL."""
    endpoint = endpoint.rstrip("/")
    endpoint = endpoint.removesuffix("/metrics")
    return f"{endpoint}/ebbtide/requests"


def _row(row: Any) -> tuple[PoolKey, FinishedRequest] | None:
    if not isinstance(row, list) or len(row) != 6:
        return None
    _, namespace, pool, arrived_at, prompt, completion = row
    if not (isinstance(namespace, str) and isinstance(pool, str)):
        return None
    if isinstance(arrived_at, bool) or not isinstance(arrived_at, int | float) or not math.isfinite(arrived_at):
        return None
    for tokens in (prompt, completion):
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            return None
    return (namespace, pool), FinishedRequest(float(arrived_at), prompt, completion)


def parse_page(body: Any) -> Page | NoData:
    """One page of /ebbtide/requests; NoData naming what is wrong when its frame is not what it must be."""
    if not isinstance(body, dict):
        return NoData("not a JSON object")
    instance, since, next_, more, rows = (body.get(k) for k in ("instance", "since", "next", "more", "requests"))
    if not isinstance(instance, str) or not instance:
        return NoData("no instance")
    if isinstance(since, bool) or not isinstance(since, int | float) or not math.isfinite(since):
        return NoData(f"invalid since {since!r}")
    if isinstance(next_, bool) or not isinstance(next_, int) or next_ < 0:
        return NoData(f"invalid next {next_!r}")
    if not isinstance(more, bool) or not isinstance(rows, list):
        return NoData("invalid more or requests")
    out: dict[PoolKey, list[FinishedRequest]] = defaultdict(list)
    skipped = 0
    for row in rows:
        parsed = _row(row)
        if parsed is None:
            skipped += 1
        else:
            out[parsed[0]].append(parsed[1])
    return Page(instance, float(since), next_, more, dict(out), skipped)


class RequestFeed:
    """Cursors over every gateway process's request log; see the module docstring."""

    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout
        self._cursors: dict[str, tuple[str, int]] = {}
        """endpoint -> (instance, last sequence number read)."""

    async def _one(
        self, http: httpx.AsyncClient, endpoint: str
    ) -> tuple[dict[PoolKey, list[FinishedRequest]], float, int] | NoData:
        url = requests_url(endpoint)
        instance, after = self._cursors.get(endpoint, ("", 0))
        out: dict[PoolKey, list[FinishedRequest]] = defaultdict(list)
        since, skipped = math.inf, 0
        for _ in range(_MAX_PAGES):
            try:
                response = await asyncio.wait_for(
                    http.get(url, params={"after": after}, timeout=self.timeout), self.timeout
                )
            except TimeoutError:
                return NoData(f"read of {url} timed out after {self.timeout:g}s")
            except (httpx.HTTPError, httpx.InvalidURL) as err:
                return NoData(f"read of {url} failed: {type(err).__name__}: {err}")
            if response.status_code != httpx.codes.OK:
                return NoData(f"HTTP {response.status_code} from {url}")
            try:
                page = parse_page(response.json())
            except ValueError as err:
                return NoData(f"{url}: not JSON: {err}")
            if isinstance(page, NoData):
                return NoData(f"{url}: {page.reason}")
            if page.instance != instance:
                if instance and after:
                    # The process restarted: what it holds now is all new.
                    out.clear()
                    instance, after = page.instance, 0
                    continue
                instance = page.instance
            since = page.since
            skipped += page.skipped
            for key, rows in page.requests.items():
                out[key].extend(rows)
            after = max(page.next, after)
            if not page.more:
                break
        self._cursors[endpoint] = (instance, after)
        return dict(out), since, skipped

    async def read(self, http: httpx.AsyncClient, endpoints: Sequence[str]) -> FeedRead:
        """Every endpoint's new requests; `failure` names the first that could not be read (the others'
        requests are returned all the same: their cursors have moved past them)."""
        results = await asyncio.gather(*(self._one(http, ep) for ep in endpoints))
        for gone in set(self._cursors) - set(endpoints):
            del self._cursors[gone]
        merged: dict[PoolKey, list[FinishedRequest]] = defaultdict(list)
        complete_since, skipped = -math.inf, 0
        failure: str | None = None
        for endpoint, result in zip(endpoints, results, strict=True):
            if isinstance(result, NoData):
                failure = failure or f"gateway {endpoint}: {result.reason}"
                continue
            rows, since, bad = result
            for key, requests in rows.items():
                merged[key].extend(requests)
            complete_since = max(complete_since, since)
            skipped += bad
        return FeedRead(dict(merged), complete_since, skipped, failure)
