"""The controller's small HTTP server: /metrics for Prometheus, /healthz and /readyz for the kubelet.

- ``/healthz`` answers 200 while ``live()`` says the loop is ticking, else 503 with its reason, so the
  kubelet restarts a wedged controller.
- ``/readyz`` answers 200 while ``ready()`` holds (this replica leads, or election is off), else 503 with
  e.g. "not the leader (holder: X)": a standby replica is alive but not ready, which `kubectl get pods`
  shows at a glance.
- ``/metrics`` is the Prometheus text format of ``registry``.

A plain asyncio server (HTTP/1.1, one request per connection, GET and HEAD only) is enough for three
read-only paths and keeps the daemon on one event loop with no extra thread or dependency. Bad requests get
a 4xx with a message; nothing a client sends can stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["HealthServer", "parse_listen_address"]

_log = logging.getLogger("ebbtide.health")

_READ_TIMEOUT = 5.0
"""Seconds a client has to send its request head; a stalled client is dropped."""
_MAX_HEAD = 16 * 1024

Check = Callable[[], tuple[bool, str]]


def parse_listen_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8081`` for IPv6; an empty host means all interfaces) with a clear error."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {text!r}: expected HOST:PORT, e.g. 0.0.0.0:8081")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"listen address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {text!r}: port {port} is outside 0-65535")
    return host or "0.0.0.0", port


class HealthServer:
    """Serves /metrics, /healthz and /readyz on one port."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        live: Check,
        ready: Check,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        """``live`` and ``ready`` return (ok, reason); they are called per request and must be quick."""
        self.host = host
        self.port = port
        self._live = live
        self._ready = ready
        self._registry = registry
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port (pass port 0 to let the system pick one)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=_MAX_HEAD)
        port: int = self._server.sockets[0].getsockname()[1]
        self.port = port
        return port

    async def stop(self) -> None:
        """Stop listening and close the open connections."""
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=_READ_TIMEOUT)
            except asyncio.LimitOverrunError:
                await self._send(writer, 431, "request head too large\n", head_only=False)
                return
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            status, content_type, body, head_only = self._respond(head)
            await self._send(writer, status, body, content_type=content_type, head_only=head_only)
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        except Exception:  # a bug here must not take the server down
            _log.exception("health server: request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> tuple[int, str, str | bytes, bool]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain; charset=utf-8", f"malformed request line {request_line[:100]!r}\n", False
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", f"method {method} not allowed: use GET\n", False
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry), head_only
        if path in ("/healthz", "/livez"):
            return (*self._check(self._live), head_only)
        if path == "/readyz":
            return (*self._check(self._ready), head_only)
        return (
            404,
            "text/plain; charset=utf-8",
            f"no such path {path[:100]!r}: try /metrics, /healthz, /readyz\n",
            False,
        )

    @staticmethod
    def _check(check: Check) -> tuple[int, str, str]:
        try:
            ok, reason = check()
        except Exception as e:  # a failing check is a failed check, not a crashed server
            ok, reason = False, f"check failed: {type(e).__name__}: {e}"
        return (200 if ok else 503), "text/plain; charset=utf-8", f"{'ok' if ok else 'not ok'}: {reason}\n"

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        body: str | bytes,
        *,
        content_type: str = "text/plain; charset=utf-8",
        head_only: bool,
    ) -> None:
        payload = body.encode() if isinstance(body, str) else body
        phrase = _PHRASES.get(status, "")
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(payload)}",
            "Connection: close",
            "",
            "",
        ]
        writer.write("\r\n".join(lines).encode("latin-1"))
        if not head_only:
            writer.write(payload)
        await writer.drain()


_PHRASES = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
