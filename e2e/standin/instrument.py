"""What a test wraps around one stand-in replica: a record of the requests it saw, and faults on its ``/metrics``.

:class:`Instrument` holds both; :meth:`Instrument.middleware` is the aiohttp
middleware that fills the record and plays the fault. The record is appended on
the replica's event loop and read from the test's thread: a list append and a
list copy are atomic under the GIL, so a reader sees every request either fully
or not at all.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = ["Instrument", "MetricsFault", "RequestRecord"]

# How often a hung /metrics handler looks whether its fault was cleared.
_HANG_POLL_SECONDS = 0.05


class MetricsFault(StrEnum):
    """How a replica's ``/metrics`` misbehaves, to stand for a dead or broken metrics endpoint."""

    NONE = "none"
    """Answer normally."""
    ERROR = "error"
    """Answer 500 with a short text body."""
    HANG = "hang"
    """Accept the request and never answer (until the fault is cleared or the replica stops)."""
    GARBAGE = "garbage"
    """Answer 200 with a body that is not the Prometheus text format."""


@dataclass
class RequestRecord:
    """One request a replica received."""

    at: float
    """Wall-clock time (``time.time()``) when it arrived."""
    method: str
    path: str
    """The path without the query string, e.g. ``/v1/completions``."""
    headers: dict[str, str]
    body: Any
    """The JSON body decoded (a dict for the OpenAI routes), the raw text if it is not JSON, None if empty."""
    status: int | None = None
    """The response's status once it was sent; None while in flight, or if the request was dropped."""


@dataclass
class Instrument:
    """One replica's request record and ``/metrics`` fault, shared by its event loop and the test thread."""

    requests: list[RequestRecord] = field(default_factory=list)
    metrics_fault: MetricsFault = MetricsFault.NONE

    def snapshot(self, path: str | None = None) -> list[RequestRecord]:
        """A copy of the record, oldest first; only requests for ``path`` when given."""
        records = list(self.requests)
        return records if path is None else [r for r in records if r.path == path]

    @property
    def middleware(self) -> Middleware:
        """The aiohttp middleware that records each request and plays :attr:`metrics_fault`."""

        @web.middleware
        async def instrument(request: web.Request, handler: Handler) -> web.StreamResponse:
            raw = await request.read() if request.can_read_body else b""
            record = RequestRecord(
                at=time.time(),
                method=request.method,
                path=request.path,
                headers=dict(request.headers),
                body=_decode(raw),
            )
            self.requests.append(record)
            response = await self._metrics_fault(request) or await _handle(handler, request, record)
            record.status = response.status
            return response

        return instrument

    async def _metrics_fault(self, request: web.Request) -> web.StreamResponse | None:
        if request.path != "/metrics":
            return None
        while self.metrics_fault is MetricsFault.HANG:
            await asyncio.sleep(_HANG_POLL_SECONDS)
        fault = self.metrics_fault
        if fault is MetricsFault.ERROR:
            return web.Response(status=500, text="metrics endpoint failing (stand-in fault)\n")
        if fault is MetricsFault.GARBAGE:
            return web.Response(status=200, text="<html>this is not the Prometheus text format{{{\n")
        return None


async def _handle(handler: Handler, request: web.Request, record: RequestRecord) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as err:
        record.status = err.status
        raise


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
