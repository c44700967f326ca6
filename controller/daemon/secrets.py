"""The Secrets the daemon needs (a Prometheus bearer token), read in the background and cached.

Only the Secrets a pool's spec names are read, each with a GET (RBAC: `get` on secrets, no list or
watch), refreshed every `refresh_seconds`, so a rotated token is picked up without a restart. The tick
only reads the cache; a Secret that cannot be read is absent (the source then reports no data, naming
the Secret), never an empty token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time

from kubernetes.client import ApiClient

from controller.demand.sources import secret_key
from controller.kube.client import api_error_message, request_json
from policies.spec import GPUPoolSpec

__all__ = ["SecretCache", "secret_refs"]

log = logging.getLogger("ebbtide.secrets")

Ref = tuple[str, str, str]
"""(namespace, Secret name, key)."""


def secret_refs(spec: GPUPoolSpec, namespace: str) -> list[Ref]:
    """The Secret keys a pool's demand source needs (in the pool's namespace)."""
    prometheus = spec.metrics.prometheus
    if prometheus is None or prometheus.bearer_token_secret_ref is None:
        return []
    ref = prometheus.bearer_token_secret_ref
    return [(namespace, ref.name, ref.key)]


class SecretCache:
    """Values of the wanted Secret keys, refreshed in the background."""

    def __init__(self, api: ApiClient, *, refresh_seconds: float = 60.0, timeout: float = 5.0) -> None:
        self._api = api
        self._refresh = refresh_seconds
        self._timeout = timeout
        self._wanted: set[Ref] = set()
        self._values: dict[Ref, str] = {}
        self._read_at: dict[Ref, float] = {}
        self._wake = asyncio.Event()

    def want(self, refs: list[Ref]) -> None:
        """Ask for these keys (read soon if new); keys no longer asked for are dropped at the next call."""
        new = set(refs) - self._wanted
        self._wanted |= set(refs)
        if new:
            self._wake.set()

    def values(self, refs: list[Ref]) -> dict[str, str]:
        """The known values as the demand sources expect them ('name/key' -> value)."""
        return {
            secret_key(name, key): self._values[(ns, name, key)]
            for ns, name, key in refs
            if (ns, name, key) in self._values
        }

    def _read(self, ref: Ref) -> str | None:
        namespace, name, key = ref
        obj = request_json(self._api, "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}", timeout=self._timeout)
        data = (obj or {}).get("data") or {}
        if key not in data:
            log.warning("Secret %s/%s has no key %r", namespace, name, key)
            return None
        return base64.b64decode(data[key]).decode("utf-8").strip()

    async def refresh(self) -> None:
        """Read every wanted key that is new or older than the refresh period."""
        now = time.monotonic()
        for ref in sorted(self._wanted):
            if now - self._read_at.get(ref, -1e9) < self._refresh:
                continue
            self._read_at[ref] = now
            try:
                value = await asyncio.to_thread(self._read, ref)
            except Exception as exc:
                log.warning("reading Secret %s/%s failed: %s", ref[0], ref[1], api_error_message(exc))
                self._values.pop(ref, None)
                continue
            if value is None:
                self._values.pop(ref, None)
            else:
                self._values[ref] = value

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until `stop` is set."""
        while not stop.is_set():
            await self.refresh()
            self._wake.clear()
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait(waiters, timeout=self._refresh / 4, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
