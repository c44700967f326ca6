"""The access log (`--access-log`): one line per generation request, saying where it went and how it ended.

Logger `ebbtide.gateway.access`, level INFO. Fields: `request_id` (the answer's `X-Request-Id`, also
sent to the replica), `method`, `path`, `model`, `pool` (namespace/name), `route` (the `X-Ebbtide-Route`
the client got: gpu, gpu-late, held-gpu, fallback, held-fallback), `provider` (the fallback that
answered), `status` (499: the client left before its answer ended; a stream it closed right after
`data: [DONE]` is logged as the finished answer it was), `stream`, `seconds` (the whole
request, a stream to its end) and `error` (the OpenAI error code of a refusal). Never a prompt, a
completion, a header or a key. In JSON the fields are top-level keys; in text they follow the message
as key=value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["ACCESS_LOG", "DELIVERED", "RequestFacts", "log_access"]

ACCESS_LOG = logging.getLogger("ebbtide.gateway.access")
CLIENT_LEFT = 499
"""The status logged for a client that disconnected first (nginx's convention; no response was sent)."""
DELIVERED = web.RequestKey("ebbtide_delivered", web.StreamResponse)
"""A stream answered to its end marker whose client closed before the handler returned: the handler was
cancelled, but the request finished, and its access line says so (status, route, provider)."""


@dataclass(slots=True)
class RequestFacts:
    """What the handler learnt about a request on its way through, for its access line."""

    request_id: str | None = None
    model: str | None = None
    pool: str | None = None
    stream: bool = False
    error: str | None = None


def log_access(request: web.Request, facts: RequestFacts, response: web.StreamResponse | None, seconds: float) -> None:
    """Write the request's access line (`response` None: the client left first)."""
    headers = response.headers if response is not None else {}
    fields: dict[str, Any] = {
        "request_id": facts.request_id,
        "method": request.method,
        "path": request.path,
        "model": facts.model,
        "pool": facts.pool,
        "route": headers.get("X-Ebbtide-Route"),
        "provider": headers.get("X-Ebbtide-Provider"),
        "status": response.status if response is not None else CLIENT_LEFT,
        "stream": facts.stream,
        "seconds": round(seconds, 4),
    }
    if facts.error is not None:
        fields["error"] = facts.error
    text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    ACCESS_LOG.info("%s", text, extra={"fields": fields})
