"""Writes GPUPool status in the background: the tick only hands over the new status object.

Writes are coalesced per pool (only the latest status of a pool is written), sent as a JSON merge patch of
the status subresource with a short timeout, and retried on the next submission after a failure; a
failure is logged, never raised. The caller decides whether a status changed (`status_changed`); this
module only delivers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client import ApiClient

from controller.kube.client import MERGE_PATCH, api_error_message, request_json
from controller.kube.drain import until_drained, wake_or_stop
from policies.spec import API_GROUP, API_VERSION, PLURAL

__all__ = ["StatusWriter", "merge_patches"]

log = logging.getLogger("ebbtide.status")

Key = tuple[str, str]


def merge_patches(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """One JSON merge patch (RFC 7386) that does what `first` then `second` do."""
    out = dict(first)
    for key, value in second.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = merge_patches(old, value)
        else:
            out[key] = value
    return out


class StatusWriter:
    """Coalescing background writer of `gpupools/status`."""

    def __init__(self, api: ApiClient, *, timeout: float = 5.0, may_write: Callable[[], bool] = lambda: True) -> None:
        """`may_write` fences the writes: a replica that stopped leading drops what it had queued."""
        self._api = api
        self._may_write = may_write
        self.dropped = 0
        self._timeout = timeout
        self._pending: dict[Key, Mapping[str, Any]] = {}
        self._wake = asyncio.Event()
        self._busy = False
        self.written = 0
        self.failed = 0

    def submit(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Queue a merge patch of the pool's status (merged into one not yet written); returns at once."""
        key = (namespace, name)
        self._pending[key] = merge_patches(self._pending.get(key, {}), patch)
        self._wake.set()

    def pending(self) -> int:
        """Statuses queued or being written."""
        return len(self._pending) + (1 if self._busy else 0)

    def _write(self, key: Key, status: Mapping[str, Any]) -> None:
        namespace, name = key
        path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
        request_json(self._api, "PATCH", path, body={"status": status}, content_type=MERGE_PATCH, timeout=self._timeout)

    async def _drain(self) -> None:
        while self._pending:
            if not self._may_write():
                self.dropped += len(self._pending)
                self._pending.clear()  # the new leader writes its own
                return
            key = next(iter(self._pending))
            status = self._pending.pop(key)
            self._busy = True
            try:
                await asyncio.to_thread(self._write, key, status)
                self.written += 1
            except Exception as exc:
                self.failed += 1
                # Keep it for the next round, under anything submitted since (which is newer).
                if "404" not in api_error_message(exc):
                    self._pending[key] = merge_patches(status, self._pending.get(key, {}))
                message = api_error_message(exc)
                if "404" in message or "not found" in message.lower():
                    log.debug("status of %s/%s not written: the pool is gone", *key)
                else:
                    log.warning("writing the status of GPUPool %s/%s failed: %s", key[0], key[1], message)
            finally:
                self._busy = False

    async def run(self, stop: asyncio.Event) -> None:
        """Write submitted statuses until `stop` is set, then what is left."""
        while not stop.is_set():
            await self._drain()
            self._wake.clear()
            if self._pending:
                continue
            await wake_or_stop(self._wake, stop, 1.0)
        await self._drain()

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted has been written or has failed; False on timeout."""
        return await until_drained(self.pending, timeout)
