"""Kubernetes Events about the objects the controller manages, written in the background and aggregated.

core/v1 Events without ``eventTime``: that field is a MicroTime the official client mangles (see
controller/kube/client.py), and leaving it out keeps the server on the legacy validation path, which needs
only first/lastTimestamp and count. A repeat of the same (object uid, type, reason, message) within
``AGGREGATE_SECONDS`` patches ``count`` and ``lastTimestamp`` of the Event already written, as client-go's
``events_cache`` does, so a reason that recurs every tick costs one object, not thousands. New distinct
Events about one object pass client-go's spam filter too (a burst of ``SPAM_BURST``, then one per
``SPAM_REFILL_SECONDS``), so a pool whose message changes every tick cannot flood etcd.

:meth:`EventSink.emit` only enqueues (the tick never waits on the API server); :meth:`EventSink.run` drains
the queue. The queue is bounded: when the API server is down, the oldest waiting Events are dropped (and
counted) rather than growing memory. Failures are logged, never raised.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes.client import ApiClient, ApiException

from controller.kube.client import STRATEGIC_MERGE_PATCH, api_error_message, format_time, request_json
from controller.kube.drain import until_drained, wake_or_stop

__all__ = ["AGGREGATE_SECONDS", "SPAM_BURST", "SPAM_REFILL_SECONDS", "EventSink", "ObjectRef"]

_log = logging.getLogger("ebbtide.events")

AGGREGATE_SECONDS = 600.0
"""A repeat within 10 minutes bumps the count of the Event already written (client-go's window)."""
_MESSAGE_LIMIT = 1024
"""events.k8s.io caps a note at 1 kB; core/v1 does not, but a longer message is noise in `kubectl describe`."""
SPAM_BURST = 25
"""New Events one object may get at once (client-go's EventSourceObjectSpamFilter burst)..."""
SPAM_REFILL_SECONDS = 300.0
"""...then one more per 5 minutes (its refill rate)."""
_NAME_PREFIX_LIMIT = 230
"""Room for ".<hex nanoseconds>" within the 253 characters an object name may have."""


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The object an Event is about (its involvedObject)."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True, slots=True)
class _Pending:
    ref: ObjectRef
    type_: str
    reason: str
    message: str
    now: dt.datetime


@dataclass(slots=True)
class _Written:
    name: str
    namespace: str
    count: int
    last_seen: dt.datetime


class EventSink:
    """Queues Events and writes them from a background task, aggregating repeats."""

    def __init__(
        self,
        api: ApiClient,
        *,
        component: str = "ebbtide-controller",
        instance: str,
        max_queue: int = 1000,
        cache_size: int = 4096,
        timeout: float = 5.0,
    ) -> None:
        """``instance`` names this replica (reportingInstance, e.g. the pod name)."""
        self._api = api
        self.component = component
        self.instance = instance
        self._queue: collections.deque[_Pending] = collections.deque(maxlen=max_queue)
        self._written: collections.OrderedDict[tuple[str, str, str, str], _Written] = collections.OrderedDict()
        self._cache_size = cache_size
        self._timeout = timeout
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False
        self.dropped = 0
        """Events dropped because the queue was full (the API server was unreachable for long)."""
        self.failed = 0
        """Events the API server refused or that could not be sent."""
        self.written = 0
        """Events created or updated."""
        self.suppressed = 0
        """New Events not written because their object had too many (the spam filter)."""
        self._buckets: collections.OrderedDict[str, tuple[float, dt.datetime]] = collections.OrderedDict()

    def emit(
        self,
        ref: ObjectRef,
        type_: Literal["Normal", "Warning"],
        reason: str,
        message: str,
        now: dt.datetime,
    ) -> None:
        """Queue one Event about ``ref`` that happened at ``now``; returns at once, never raises."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                _log.warning("event queue full: dropped %d events so far (is the API server reachable?)", self.dropped)
        self._queue.append(_Pending(ref, type_, reason, message[:_MESSAGE_LIMIT], now))
        self._poke()

    def _poke(self) -> None:
        # asyncio.Event is not thread-safe: from another thread, hand the wake-up to the writer's loop.
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to wake
                loop.call_soon_threadsafe(self._wake.set)

    def pending(self) -> int:
        """Events queued or being written."""
        return len(self._queue) + (1 if self._busy else 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Write queued Events until ``stop`` is set, then write what is left (bounded by the timeout)."""
        self._loop = asyncio.get_running_loop()
        while not stop.is_set():
            await self._drain()
            self._wake.clear()
            if self._queue:
                continue
            # Wake on emit or on stop; the timeout is only a safety net.
            await wake_or_stop(self._wake, stop, 0.5)
        await self._drain()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued Event has been written (by :meth:`run`); False if ``timeout`` passed first."""
        return await until_drained(self.pending, timeout)

    async def _drain(self) -> None:
        while self._queue:
            item = self._queue.popleft()
            self._busy = True
            try:
                if await asyncio.to_thread(self._write, item):
                    self.written += 1
            except Exception as e:  # never let one bad Event stop the writer
                self.failed += 1
                _log.warning(
                    "event %s %s on %s %s/%s not written: %s",
                    item.type_,
                    item.reason,
                    item.ref.kind,
                    item.ref.namespace,
                    item.ref.name,
                    api_error_message(e),
                )
            finally:
                self._busy = False

    def _write(self, item: _Pending) -> bool:
        """Create or bump the Event; False when the spam filter held it back."""
        key = (item.ref.uid, item.type_, item.reason, item.message)
        earlier = self._written.get(key)
        if earlier is not None and (item.now - earlier.last_seen).total_seconds() <= AGGREGATE_SECONDS:
            count = earlier.count + 1
            patch = {"count": count, "lastTimestamp": format_time(item.now)}
            path = f"/api/v1/namespaces/{earlier.namespace}/events/{earlier.name}"
            try:
                request_json(
                    self._api, "PATCH", path, body=patch, content_type=STRATEGIC_MERGE_PATCH, timeout=self._timeout
                )
            except ApiException as e:
                if e.status != 404:
                    raise
                # The Event expired (the API server keeps them an hour by default) or was deleted: start anew.
            else:
                earlier.count = count
                earlier.last_seen = item.now
                self._written.move_to_end(key)
                return True
        if not self._spam_allows(item):
            self.suppressed += 1
            _log.info(
                "event %s %s on %s %s/%s suppressed: too many events about this object",
                item.type_,
                item.reason,
                item.ref.kind,
                item.ref.namespace,
                item.ref.name,
            )
            return False
        written = self._create(item)
        self._written[key] = written
        self._written.move_to_end(key)
        while len(self._written) > self._cache_size:
            self._written.popitem(last=False)
        return True

    def _spam_allows(self, item: _Pending) -> bool:
        """Token bucket per object, on the caller's clock (so tests step time instead of sleeping)."""
        tokens, at = self._buckets.get(item.ref.uid, (float(SPAM_BURST), item.now))
        elapsed = max(0.0, (item.now - at).total_seconds())
        tokens = min(float(SPAM_BURST), tokens + elapsed / SPAM_REFILL_SECONDS)
        allowed = tokens >= 1.0
        self._buckets[item.ref.uid] = (tokens - 1.0 if allowed else tokens, max(at, item.now))
        self._buckets.move_to_end(item.ref.uid)
        while len(self._buckets) > self._cache_size:
            self._buckets.popitem(last=False)
        return allowed

    def _create(self, item: _Pending) -> _Written:
        namespace = item.ref.namespace or "default"
        stamp = format_time(item.now)
        for attempt in range(3):
            # client-go names Events "<object>.<hex nanoseconds>"; a clash (409) is retried with a new name.
            name = f"{item.ref.name[:_NAME_PREFIX_LIMIT]}.{time.time_ns() + attempt:x}"
            body: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": {
                    "apiVersion": item.ref.api_version,
                    "kind": item.ref.kind,
                    "name": item.ref.name,
                    "namespace": item.ref.namespace,
                    "uid": item.ref.uid,
                },
                "type": item.type_,
                "reason": item.reason,
                "message": item.message,
                "source": {"component": self.component, "host": self.instance},
                "reportingComponent": self.component,
                "reportingInstance": self.instance,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            }
            try:
                request_json(
                    self._api, "POST", f"/api/v1/namespaces/{namespace}/events", body=body, timeout=self._timeout
                )
            except ApiException as e:
                if e.status == 409 and attempt < 2:
                    continue
                raise
            return _Written(name, namespace, 1, item.now)
        raise AssertionError("unreachable")  # pragma: no cover
