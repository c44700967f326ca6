"""Serving one routed request: hold, GPU, fallback chain, errors, and the accounting of what happened.

The fallback chain tries the pool's providers in order, skipping those cooling down, until one answers
or the client's deadline passes; a 400/401/403/404/422 is never retried elsewhere. A GPU attempt that
fails before its first byte reached the client (connect error, vLLM's 503 at its queue limit, another
5xx) moves to the fallback when it is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

import aiohttp
from aiohttp import web

from controller.demand.series import RouteLabel
from gateway.access import DELIVERED
from gateway.accounting import usd
from gateway.config import GatewaySettings
from gateway.directory import PoolState
from gateway.errors import ApiError, error_event
from gateway.hold import HoldResult, hold, keep_alive
from gateway.inbound import ClientRequest, gpu_body, provider_body
from gateway.providers import ProviderState
from gateway.relay import AttemptFailed, Progress, Refused, Relayed, passed_on, relay
from gateway.routing import Action, Plan, plan_request
from policies.overflow import Lane, Route

__all__ = ["Dispatcher"]

_LOG = logging.getLogger("ebbtide.gateway")
_GPU_ATTEMPTS = 3
"""Replicas tried for one request when connections fail (each failed one leaves the rotation for a while)."""
_DEADLINE_MARGIN_SECONDS = 1.0
"""A hold ends this long before the client's deadline (ClientRequest.deadline, first_byte_deadline), so
the 503 reaches it."""
_GPU_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=2.0)
_GPU_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def _route_headers(route: RouteLabel, provider: str | None = None) -> Mapping[str, str]:
    if provider is None:
        return {"X-Ebbtide-Route": route.value}
    return {"X-Ebbtide-Route": route.value, "X-Ebbtide-Provider": provider}


_GPU_ROUTE_HEADERS = {route: _route_headers(route) for route in RouteLabel}


def _epoch(monotonic_at: float) -> float:
    """A moment on the monotonic clock as epoch seconds (what the controller's replay merges on)."""
    return time.time() - (time.monotonic() - monotonic_at)


def _beyond_objective(pool: PoolState, req: ClientRequest) -> bool:
    """Whether the fallback served this request because no replica could have served it on time: its
    prompt alone (as routing estimated it) takes longer than the objective to prefill."""
    return pool.spec.sends_long_prompts_away and pool.spec.beyond_objective(req.prompt_tokens)


class Dispatcher:
    """Serves requests once their pool is known."""

    def __init__(self, session: aiohttp.ClientSession, settings: GatewaySettings) -> None:
        self.session = session
        self.settings = settings

    def _plan(self, pool: PoolState, req: ClientRequest) -> Plan:
        s = self.settings
        return plan_request(
            pool,
            prompt_tokens=req.prompt_tokens,
            now=time.monotonic(),
            arrival=req.arrival,
            controller_tick=s.controller_tick_seconds,
            max_hold_seconds=s.max_hold_seconds,
        )

    async def serve(
        self, request: web.Request, pool: PoolState, req: ClientRequest, received: float
    ) -> web.StreamResponse:
        """Route and serve one request; `received` is when its handler started (perf_counter)."""
        plan = self._plan(pool, req)
        if plan.action is not Action.HOLD:
            return await self._route(request, pool, req, plan, received, None)
        began = time.perf_counter()
        holder: list[web.StreamResponse] = []
        keepalive = None
        if req.stream and self.settings.keepalive_seconds > 0:
            keepalive = asyncio.create_task(keep_alive(request, holder, self.settings.keepalive_seconds))
        try:
            tick = self.settings.controller_tick_seconds

            def due_by(now: float) -> float:
                return pool.ready_eta(now, tick)

            # Held for a replica due in time with a fallback waiting: stop as soon as none is due.
            waiting_for = due_by if plan.decision.route is Route.FALLBACK else None
            until = plan.hold_until
            limit = self._hold_limit(req)
            if limit is not None:
                # The client gives up at its deadline: answer it (503) a little before, not with silence.
                until = min(until, limit - _DEADLINE_MARGIN_SECONDS)
            result = await hold(pool, until, self.settings.max_held, due_by=waiting_for)
        finally:
            if keepalive is not None:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await keepalive
        received += time.perf_counter() - began  # the hold is not latency the gateway adds
        started = holder[0] if holder else None
        try:
            return await self._route(request, pool, req, plan, received, started, result)
        except ApiError as err:
            if started is None:
                raise
            # The client already has a 200 and keep-alive comments: the error goes in the stream.
            with contextlib.suppress(ConnectionError):
                await started.write(error_event(err.status, err.message, code=err.code))
                await started.write_eof()
            return started

    def _hold_limit(self, req: ClientRequest) -> float | None:
        """When a held request must have its answer started: the client's total deadline, and its read
        timeout unless keep-alive comments on a held stream reach it first (each resets that timer)."""
        limit, first_byte = req.deadline, req.first_byte_deadline
        if first_byte is None or first_byte == limit:
            return limit
        every = self.settings.keepalive_seconds
        if req.stream and every > 0 and req.arrival + every + _DEADLINE_MARGIN_SECONDS < first_byte:
            return limit
        return first_byte if limit is None else min(limit, first_byte)

    async def _route(
        self,
        request: web.Request,
        pool: PoolState,
        req: ClientRequest,
        plan: Plan,
        received: float,
        started: web.StreamResponse | None,
        result: HoldResult | None = None,
    ) -> web.StreamResponse:
        held = result is not None
        if result is not None:
            if result is HoldResult.READY:
                plan = self._plan(pool, req)
                if plan.action is Action.HOLD:  # only the pool's removal gets here
                    raise ApiError(503, f"pool {pool.name} has no Ready replica", code="no_replica")
            elif pool.providers and pool.fallback_usable(time.monotonic()):
                plan = Plan(Action.FALLBACK, plan.decision)
            else:
                self._count_rejected(pool, req)
                why = "the hold queue is full" if result is HoldResult.FULL else "no replica became Ready in time"
                raise ApiError(503, f"pool {pool.name}: {why}", code="no_replica", headers={"Retry-After": "5"})
        if plan.action is Action.REJECT:
            self._count_rejected(pool, req)
            raise ApiError(
                429,
                f"pool {pool.name}: the fallback is closed by today's spending cap and the GPUs are full",
                code="fallback_closed",
                headers={"Retry-After": "60"},
            )
        if plan.action is Action.UNAVAILABLE:
            self._count_rejected(pool, req)
            wait = min(p.cooldown_until for p in pool.providers) - time.monotonic()
            raise ApiError(
                503,
                f"pool {pool.name}: no replica is Ready and every fallback provider is cooling down after failures",
                code="fallback_unavailable",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        if plan.action is Action.GPU:
            for _ in range(_GPU_ATTEMPTS):
                outcome = await self._gpu(request, pool, req, plan, held, received, started)
                if not isinstance(outcome, AttemptFailed):
                    return outcome
                if outcome.reason == "connect":
                    # That endpoint is out of rotation now: another Ready one is cheaper than the fallback.
                    plan = self._plan(pool, req)
                    if plan.action is Action.GPU:
                        continue
                if pool.providers and pool.fallback_usable(time.monotonic()):
                    break
                status = outcome.status if outcome.status in (429, 503) else 502
                raise ApiError(
                    status, f"pool {pool.name}: the replica failed ({outcome.reason})", code="upstream_error"
                )
            plan.ready = max(plan.ready, 1)
        route = RouteLabel.HELD_FALLBACK if held else RouteLabel.FALLBACK
        saturated = plan.ready > 0 and not held and plan.saturation
        return await self._fallback(request, pool, req, route, saturated=saturated, received=received, started=started)

    async def _gpu(
        self,
        request: web.Request,
        pool: PoolState,
        req: ClientRequest,
        plan: Plan,
        held: bool,
        received: float,
        started: web.StreamResponse | None,
    ) -> web.StreamResponse | AttemptFailed:
        """Serve on a replica; the failure when it failed before anything reached the client."""
        endpoint = plan.endpoint
        assert endpoint is not None
        late = plan.lane is Lane.LATE
        route = RouteLabel.HELD_GPU if held else (RouteLabel.GPU_LATE if late else RouteLabel.GPU)
        priority = self.settings.late_priority if late and endpoint.priority_ok is not False else None
        demand = pool.spec.demand
        work = demand.work_tokens(req.prompt_tokens, req.expected_output(pool.mean_completion))
        url = endpoint.chat_url if req.chat else endpoint.completions_url
        gauge = pool.metrics.in_flight["gpu"]
        endpoint.in_flight += 1
        # A stream's first token is seen: until then its work is surely still ahead (PoolState.waiting).
        prefill = demand.prefill_seconds(req.prompt_tokens) * demand.replica_tokens_per_second if req.stream else None
        token = pool.add_work(work, late, time.monotonic(), prefill=prefill)

        def first_token() -> None:
            pool.first_token(late, token)

        progress = Progress()
        gauge.inc()
        try:
            body = gpu_body(req, pool.served_model, priority)
            pool.metrics.added_latency.observe(time.perf_counter() - received)
            try:
                result = await self._relay_gpu(request, req, url, body, route, started, first_token, progress)
            except Refused as refused:
                if priority is not None and refused.status == 400 and b"priority" in refused.body.lower():
                    endpoint.priority_ok = False
                    _LOG.warning(
                        "endpoint %s refuses request priority; the late lane queues in FIFO order", endpoint.name
                    )
                    plain = gpu_body(req, pool.served_model, None)
                    result = await self._relay_gpu(request, req, url, plain, route, started, first_token, progress)
                else:
                    raise
        except AttemptFailed as failed:
            if failed.reason == "connect":
                endpoint.connect_failed(time.monotonic())
                pool.refresh_ready()
            return failed
        except Refused as refused:
            self._count_rejected(pool, req)
            if refused.status in (401, 403):
                # vLLM started with --api-key: the gateway's configuration, not the client's key, is wrong.
                raise ApiError(
                    502, f"replica {endpoint.name} refused the gateway (HTTP {refused.status})", code="replica_auth"
                ) from None
            return passed_on(refused, started)
        except (ConnectionError, asyncio.CancelledError):
            finished = progress.finished()
            if finished is None:
                # The client left mid-request: count it with what it was sent and had generated (estimated
                # unless the replica had reported its usage), and log it for the replay: it was load.
                prompt, completion, estimated = progress.left(req.prompt_tokens)
                pool.metrics.finished(route, prompt, completion, estimated=estimated, arrived_at=_epoch(req.arrival))
            else:
                # The client left after the stream's end (the openai clients close on `data: [DONE]`,
                # often before the upstream's body has ended): a finished request, with its usage.
                self._gpu_finished(pool, req, route, finished)
                request[DELIVERED] = finished.response
            raise
        finally:
            endpoint.in_flight -= 1
            pool.remove_work(work, late, token)
            gauge.dec()
        self._gpu_finished(pool, req, route, result)
        return result.response

    def _gpu_finished(self, pool: PoolState, req: ClientRequest, route: RouteLabel, result: Relayed) -> None:
        if not result.estimated:
            pool.learn(result.prompt_tokens, result.completion_tokens)
        pool.metrics.finished(route, result.prompt_tokens, result.completion_tokens, estimated=result.estimated,
                              arrived_at=_epoch(req.arrival))  # fmt: skip

    async def _relay_gpu(
        self,
        request: web.Request,
        req: ClientRequest,
        url: str,
        body: bytes,
        route: RouteLabel,
        started: web.StreamResponse | None,
        first_token: Callable[[], None],
        progress: Progress,
    ) -> Relayed:
        return await relay(
            request,
            self.session,
            url,
            body,
            headers={**_GPU_HEADERS, "X-Request-Id": req.request_id} if req.request_id else _GPU_HEADERS,
            timeout=_GPU_TIMEOUT,
            first_byte=None,
            stream=req.stream,
            strip_usage=req.stream and not req.wants_usage,
            prompt_estimate=req.prompt_tokens,
            response_headers=_GPU_ROUTE_HEADERS[route],
            started=started,
            on_first_token=first_token,
            progress=progress,
        )

    async def _fallback(
        self,
        request: web.Request,
        pool: PoolState,
        req: ClientRequest,
        route: RouteLabel,
        *,
        saturated: bool,
        received: float,
        started: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        failures: list[str] = []
        retry_after: float | None = None
        last_status = 502
        gauge = pool.metrics.in_flight["fallback"]
        first = True
        for provider in pool.providers:
            now = time.monotonic()
            if not provider.available(now):
                failures.append(f"{provider.name}: cooling down")
                continue
            timeout = provider.timeout
            first_byte = provider.spec.first_byte_timeout_seconds
            # A started stream (keep-alive comments) has had its first byte: only the total deadline binds.
            waits = req.first_byte_deadline if started is None else req.deadline
            left = None if req.deadline is None else req.deadline - now
            left_first = None if waits is None else waits - now
            if (left is not None and left <= 0) or (left_first is not None and left_first <= 0):
                failures.append("the client's deadline passed")
                last_status = 504
                break
            if left is not None:
                timeout = aiohttp.ClientTimeout(total=min(provider.spec.total_timeout_seconds, left),
                                                sock_connect=provider.spec.connect_timeout_seconds)  # fmt: skip
            if left_first is not None:
                first_byte = min(first_byte, left_first)
            provider.acquire(now)
            gauge.inc()
            verdict = False
            progress = Progress()
            try:
                if first:
                    pool.metrics.added_latency.observe(time.perf_counter() - received)
                    first = False
                result = await relay(
                    request,
                    self.session,
                    provider.chat_url if req.chat else provider.completions_url,
                    provider_body(req, provider.spec.model),
                    headers=provider.headers,
                    timeout=timeout,
                    first_byte=first_byte,
                    stream=req.stream,
                    strip_usage=req.stream and not req.wants_usage,
                    prompt_estimate=req.prompt_tokens,
                    response_headers=_route_headers(route, provider.name),
                    started=started,
                    progress=progress,
                )
            except AttemptFailed as failed:
                verdict = True
                seconds = provider.failed(time.monotonic(), failed.retry_after)
                pool.metrics.provider_failed(provider.name, failed.reason)
                _LOG.warning("provider %s of pool %s failed (%s); cooling down %.0f s", provider.name, pool.name,
                             failed.reason, seconds)  # fmt: skip
                failures.append(f"{provider.name}: {failed.reason}")
                if failed.status is not None:
                    last_status = failed.status
                elif failed.reason == "timeout":
                    last_status = 504
                if failed.retry_after is not None:
                    retry_after = failed.retry_after if retry_after is None else min(retry_after, failed.retry_after)
                continue
            except Refused as refused:
                verdict = True
                provider.succeeded()
                return self._refused(pool, req, provider, refused, started)
            except (ConnectionError, asyncio.CancelledError):
                finished = progress.finished()
                if finished is None:
                    # The client left mid-request: the provider bills the prompt and what it generated
                    # until the gateway dropped it, so the spend (and the daily cap) counts them too.
                    prompt, completion, estimated = progress.left(req.prompt_tokens)
                    dollars = usd(prompt, completion, provider.spec.input_usd_per_million,
                                  provider.spec.output_usd_per_million)  # fmt: skip
                    pool.metrics.finished(route, prompt, completion, estimated=estimated, saturated=saturated,
                                          beyond_objective=_beyond_objective(pool, req),
                                          provider=provider.name, dollars=dollars,
                                          arrived_at=_epoch(req.arrival))  # fmt: skip
                else:
                    # The client left after the stream's end (see _gpu): a finished request, billed.
                    verdict = True
                    self._fallback_finished(pool, req, route, provider, finished, saturated=saturated)
                    request[DELIVERED] = finished.response
                raise
            finally:
                gauge.dec()
                if not verdict:
                    provider.released()
            self._fallback_finished(pool, req, route, provider, result, saturated=saturated)
            return result.response
        self._count_rejected(pool, req)
        return self._all_failed(pool, failures, last_status, retry_after)

    def _fallback_finished(
        self,
        pool: PoolState,
        req: ClientRequest,
        route: RouteLabel,
        provider: ProviderState,
        result: Relayed,
        *,
        saturated: bool,
    ) -> None:
        if result.broken:
            # Its stream broke after reaching the client (ended there with an error event).
            provider.failed(time.monotonic())
            pool.metrics.provider_failed(provider.name, "stream-broken")
        else:
            provider.succeeded()
        dollars = usd(result.prompt_tokens, result.completion_tokens, provider.spec.input_usd_per_million,
                      provider.spec.output_usd_per_million)  # fmt: skip
        pool.metrics.finished(route, result.prompt_tokens, result.completion_tokens, estimated=result.estimated,
                              saturated=saturated, beyond_objective=_beyond_objective(pool, req),
                              provider=provider.name, dollars=dollars,
                              arrived_at=_epoch(req.arrival))  # fmt: skip

    def _refused(
        self,
        pool: PoolState,
        req: ClientRequest,
        provider: ProviderState,
        refused: Refused,
        started: web.StreamResponse | None,
    ) -> web.StreamResponse:
        self._count_rejected(pool, req)
        if refused.status in (401, 403):
            # The provider refused the gateway's own key: the client's request is fine, the gateway is not.
            raise ApiError(502, f"provider {provider.name} refused the gateway's credentials (HTTP {refused.status})",
                           code="provider_auth")  # fmt: skip
        return passed_on(refused, started)

    def _all_failed(self, pool: PoolState, failures: list[str], status: int, retry_after: float | None) -> web.Response:
        if not failures:
            failures = ["no provider configured"]
        if status not in (429, 503, 504):
            status = 502
        headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
        raise ApiError(status, f"pool {pool.name}: every fallback provider failed ({'; '.join(failures)})",
                       code="fallback_failed", headers=headers)  # fmt: skip

    def _count_rejected(self, pool: PoolState, req: ClientRequest) -> None:
        pool.metrics.finished(RouteLabel.REJECTED, req.prompt_tokens, 0, estimated=True)
