"""One resource kind kept in memory by list+watch, for the daemon's snapshots.

`Watched` lists the objects, then watches from the list's resourceVersion (with bookmarks) until the
server closes the watch, and watches again from the last version seen; a `410 Gone` (the version is too
old) or any error relists after a short back-off, and a full relist every `resync` seconds corrects
whatever a watch may have missed. The kubernetes client is synchronous, so each call runs in a thread
with `_request_timeout`; results come back to the event loop with `call_soon_threadsafe`, so the items
change only on the loop and a reader on the loop never sees a half-applied update. Objects are read as
raw JSON (`_preload_content=False`) and reduced by a transform, which keeps memory small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

__all__ = ["Key", "Watched", "explain"]

log = logging.getLogger("ebbtide.snapshots")

Key = tuple[str, str]
"""(namespace, name)."""

T = TypeVar("T")

# How long one list may take, and how long the server keeps one watch open before we re-watch.
_LIST_TIMEOUT_SECONDS = 30.0
_WATCH_SECONDS = 60
_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


class Watched(Generic[T]):
    """One resource kind, listed and watched into `items` (key -> reduced object)."""

    def __init__(
        self,
        kind: str,
        list_call: Callable[..., Any],
        transform: Callable[[Mapping[str, Any]], T],
        *,
        label_selector: str | None = None,
        resync_seconds: float = 300.0,
        watch_seconds: int = _WATCH_SECONDS,
        on_change: Callable[[str, Key], None] | None = None,
    ) -> None:
        self.kind = kind
        self.items: dict[Key, T] = {}
        self.synced = asyncio.Event()
        self.last_error = ""
        self.failing_since: float | None = None
        """time.monotonic() of the first failure since the last successful list (None: healthy)."""
        self.listed_at: float | None = None
        """time.monotonic() of the last successful list."""
        self._list_call = list_call
        self._transform = transform
        self._label_selector = label_selector
        self._resync = resync_seconds
        self._watch_seconds = watch_seconds
        self._on_change = on_change
        self._resource_version = ""
        self.version = 0
        """Counts changes, so readers can cache what they derive from `items`."""
        self._response: Any = None
        self._stopping = False

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"_preload_content": False}
        if self._label_selector:
            kwargs["label_selector"] = self._label_selector
        return kwargs

    def _list_blocking(self) -> tuple[dict[Key, T], str]:
        response = self._list_call(**self._kwargs(), _request_timeout=_LIST_TIMEOUT_SECONDS)
        body = json.loads(response.data)
        items: dict[Key, T] = {}
        for obj in body.get("items") or ():
            meta = _meta(obj)
            items[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = self._transform(obj)
        return items, str(_meta(body).get("resourceVersion", ""))

    async def relist(self) -> None:
        """List every object now and replace the snapshot (raises on failure)."""
        items, version = await asyncio.to_thread(self._list_blocking)
        changed = set(items) ^ set(self.items) | {k for k in items if self.items.get(k) != items[k]}
        self.items = items
        self.version += 1
        self._resource_version = version
        self.listed_at = time.monotonic()
        self.last_error = ""
        self.failing_since = None
        self.synced.set()
        for key in changed:
            self._notify("RELIST", key)

    def _notify(self, event: str, key: Key) -> None:
        if self._on_change is not None:
            try:
                self._on_change(event, key)
            except Exception:  # a listener's bug must not stop the watch
                log.exception("%s change listener failed", self.kind)

    def _apply(self, event: str, obj: Mapping[str, Any]) -> None:
        meta = _meta(obj)
        version = meta.get("resourceVersion")
        if version:
            self._resource_version = str(version)
        if event == "BOOKMARK":
            return
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event == "DELETED":
            self.items.pop(key, None)
        else:
            self.items[key] = self._transform(obj)
        self.version += 1
        self._notify(event, key)

    def _watch_blocking(self, loop: asyncio.AbstractEventLoop) -> None:
        response = self._list_call(
            **self._kwargs(),
            watch=True,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_seconds,
            _request_timeout=(10, self._watch_seconds + 15),
        )
        self._response = response
        if self._stopping:
            response.release_conn()
            return
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event.get("type", ""), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone(str(obj.get("message", "resource version too old")))
                    raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                loop.call_soon_threadsafe(self._apply, kind, obj)
        finally:
            self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()

    def shutdown(self) -> None:
        """Unblock a watch in progress (from the loop thread) so its thread ends now."""
        self._stopping = True
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()

    async def run(self, stop: asyncio.Event) -> None:
        """List, then watch, until `stop` is set; errors are logged and retried with back-off."""
        loop = asyncio.get_running_loop()
        failures = 0
        need_list = True
        while not stop.is_set():
            try:
                if need_list or (self.listed_at is not None and time.monotonic() - self.listed_at > self._resync):
                    await self.relist()
                    need_list = False
                await asyncio.to_thread(self._watch_blocking, loop)
                failures = 0
            except _Gone as exc:
                log.info("%s watch expired (%s); relisting", self.kind, exc)
                need_list = True
            except Exception as exc:
                if stop.is_set():
                    break
                self.last_error = explain(self.kind, _describe(exc))
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                delay = _BACKOFF_SECONDS[min(failures, len(_BACKOFF_SECONDS) - 1)]
                failures += 1
                need_list = True
                log.warning("%s list/watch failed (%s); retrying in %.1f s", self.kind, self.last_error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, client.ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def explain(kind: str, error: str) -> str:
    """A list/watch error with what to do about the usual causes (no CRD, missing RBAC)."""
    if kind == "gpupools" and error.startswith("HTTP 404"):
        return f"{error}: the GPUPool CRD is not installed (kubectl apply -f manifests/crds/)"
    if error.startswith("HTTP 403"):
        return f"{error}: the controller may not list/watch {kind} (see manifests/rbac/)"
    if error.startswith("HTTP 401"):
        return f"{error}: the credentials were refused (kubeconfig or ServiceAccount token)"
    return error
