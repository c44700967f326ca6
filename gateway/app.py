"""The gateway's aiohttp application: the OpenAI routes, /metrics, /ebbtide/requests, /healthz and /readyz.

The hot path is one handler per request with no middleware: read the body (bounded), parse it once,
look the model up, route, relay. Every refusal is an OpenAI-style error with a 4xx status; unknown
paths and methods too. Run it with `handler_cancellation=True` (as `serve` does) so a client that
disconnects cancels its handler, its hold and its upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
import orjson
from aiohttp import web

from gateway.access import DELIVERED, RequestFacts, log_access
from gateway.auth import ClientAuth
from gateway.config import GatewaySettings
from gateway.directory import PoolDirectory
from gateway.dispatch import Dispatcher
from gateway.errors import ApiError, error_response, error_type
from gateway.inbound import parse_request, request_id
from gateway.requestlog import DEFAULT_PAGE, MAX_PAGE
from gateway.scraper import scrape_forever

__all__ = ["GATEWAY", "Gateway", "build_app"]

_LOG = logging.getLogger("ebbtide.gateway")
_POST_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
_GET_ROUTES = frozenset({"/v1/models", "/metrics", "/ebbtide/requests", "/healthz", "/readyz"})
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Gateway:
    """The state behind the app: the pool directory, settings, client auth, and (once started) the
    upstream session, the dispatcher and the scraper task."""

    def __init__(self, directory: PoolDirectory, settings: GatewaySettings, auth: ClientAuth | None = None) -> None:
        self.directory = directory
        self.settings = settings
        self.auth = auth
        self.session: aiohttp.ClientSession | None = None
        self.dispatcher: Dispatcher | None = None
        self._scraper: asyncio.Task[None] | None = None
        self.draining = False
        """Shutting down: /readyz answers 503 so no new traffic is sent here, requests under way finish."""

    async def start(self, *, scrape: bool = True) -> None:
        """Open the upstream session and start the scraper."""
        connector = aiohttp.TCPConnector(
            limit=self.settings.upstream_connections, limit_per_host=0, ttl_dns_cache=60, enable_cleanup_closed=True
        )
        # auto_decompress off: bytes are relayed as the upstream sent them (we ask for no compression).
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )
        self.dispatcher = Dispatcher(self.session, self.settings)
        if scrape:
            self._scraper = asyncio.create_task(scrape_forever(self.session, self.directory, self.settings))

    async def stop(self) -> None:
        """Stop the scraper and close the session."""
        if self._scraper is not None:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scraper
            self._scraper = None
        if self.session is not None:
            await self.session.close()
            self.session = None


GATEWAY = web.AppKey("gateway", Gateway)
REQUEST_ID = web.RequestKey("request_id", str)
"""The id of a generation request (gateway/inbound.py `request_id`), stamped on its response."""


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # Every answer of a generation request carries its id (streams, errors, held keep-alives alike).
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers["X-Request-Id"] = rid


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    received = time.perf_counter()
    gw = request.app[GATEWAY]
    if not gw.settings.access_log:
        return await _answer(request, gw, chat, received, None)
    facts = RequestFacts()
    response: web.StreamResponse | None = None
    try:
        response = await _answer(request, gw, chat, received, facts)
        return response
    except web.HTTPException as exc:  # aiohttp's own refusals are responses too (3.x)
        response = exc
        raise
    finally:
        if response is None:  # cancelled: the client left, possibly after a stream's end (see DELIVERED)
            response = request.get(DELIVERED)
        log_access(request, facts, response, time.perf_counter() - received)


async def _answer(
    request: web.Request, gw: Gateway, chat: bool, received: float, facts: RequestFacts | None
) -> web.StreamResponse:
    metrics = gw.directory.metrics
    request[REQUEST_ID] = request_id(request.headers.get("X-Request-Id"))
    if facts is not None:
        facts.request_id = request[REQUEST_ID]
    try:
        if gw.auth is not None and not gw.auth.check(request.headers.get("Authorization")):
            raise ApiError(401, "a valid API key is required (Authorization: Bearer <key>)", code="invalid_api_key")
        length = request.content_length
        if length is not None and length > gw.settings.max_body_bytes:
            raise ApiError(413, f"the request body exceeds {gw.settings.max_body_bytes} bytes", code="body_too_large")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(
                413, f"the request body exceeds {gw.settings.max_body_bytes} bytes", code="body_too_large"
            ) from None
        except web.RequestPayloadError as err:
            # A body that breaks off, or whose Content-Encoding does not decode: the client's fault.
            raise ApiError(400, f"the request body could not be read: {err.__cause__ or err}") from None
        headers = request.headers
        req = parse_request(
            raw,
            chat=chat,
            arrival=time.monotonic(),
            timeout_header=headers.get("X-Stainless-Timeout"),
            read_timeout_header=headers.get("X-Stainless-Read-Timeout"),
        )
        req.request_id = request[REQUEST_ID]
        pool = gw.directory.by_model.get(req.model)
        if facts is not None:
            facts.model, facts.stream = req.model, req.stream
            facts.pool = pool.name if pool is not None else None
        if pool is None:
            raise ApiError(404, f"the model `{req.model}` does not exist", param="model", code="model_not_found")
        assert gw.dispatcher is not None
        return await gw.dispatcher.serve(request, pool, req, received)
    except ApiError as err:
        if err.status in (400, 401, 404, 413):
            metrics.invalid_requests.labels(str(err.status)).inc()
        if facts is not None:
            facts.error = err.code or error_type(err.status)
        return err.response()
    except ConnectionResetError:
        # The client went away while its answer was written; there is nobody to answer.
        raise
    except (web.HTTPException, asyncio.CancelledError):
        raise
    except Exception as err:
        _LOG.error("request failed: %s", type(err).__name__, exc_info=err)
        if facts is not None:
            facts.error = "internal_error"
        return error_response(500, "the gateway failed to handle the request", code="internal_error")


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, True)


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, False)


async def _models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if gw.auth is not None and not gw.auth.check(request.headers.get("Authorization")):
        return error_response(401, "a valid API key is required (Authorization: Bearer <key>)", code="invalid_api_key")
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": f"ebbtide:{pool.name}"}
        for model, pool in sorted(gw.directory.by_model.items())
    ]
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].directory.metrics.render()
    return web.Response(body=body, headers={"Content-Type": _METRICS_TYPE})


async def _requests(request: web.Request) -> web.Response:
    log = request.app[GATEWAY].directory.metrics.request_log
    try:
        after = int(request.query.get("after", "0"))
        limit = int(request.query.get("limit", str(DEFAULT_PAGE)))
        page = log.page(after, limit)
    except ValueError:
        return error_response(
            400, f"after must be an integer >= 0 and limit one in 1..{MAX_PAGE} (got {request.query_string!r})"
        )
    return web.Response(body=orjson.dumps(page), content_type="application/json")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if gw.draining:
        return web.Response(status=503, text="not ready: shutting down\n")
    if gw.directory.synced:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready: the pools are not loaded yet\n")


async def _unknown(request: web.Request) -> web.Response:
    if request.path in _POST_ROUTES or request.path in _GET_ROUTES:
        allowed = "POST" if request.path in _POST_ROUTES else "GET"
        return error_response(405, f"{request.method} is not allowed on {request.path}; use {allowed}",
                              headers={"Allow": allowed})  # fmt: skip
    return error_response(404, f"no route {request.path}", code="not_found")


def build_app(gateway: Gateway, *, scrape: bool = True) -> web.Application:
    """The aiohttp application serving `gateway` (its session and scraper start with the app)."""
    app = web.Application(client_max_size=gateway.settings.max_body_bytes)
    app[GATEWAY] = gateway

    async def on_startup(app: web.Application) -> None:
        await gateway.start(scrape=scrape)

    async def on_cleanup(app: web.Application) -> None:
        await gateway.stop()

    app.on_response_prepare.append(_stamp_request_id)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_get("/v1/models", _models, allow_head=False)
    app.router.add_get("/metrics", _metrics, allow_head=False)
    app.router.add_get("/ebbtide/requests", _requests, allow_head=False)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_route("*", "/{tail:.*}", _unknown)
    return app
