"""Stand-in vLLM replicas that follow a Deployment's Ready pods, each listening at its pod's own IP.

kwok gives the e2e cluster's pods IPs inside 127.0.0.0/8 (e2e/cluster/local.py) and
Linux routes all of 127/8 to the loopback interface, so a replica can listen at the
very address the API reports for its pod. A controller or gateway under test then
discovers pods through the API, as in production, and reaches a real server at
``podIP:port``; the test sees what each pod was sent.

:class:`PodFollower` lists the pods matching a label selector (or a Deployment's
selector) every ``poll_interval`` seconds on its own event loop in a daemon thread.
It keeps one replica (:class:`FollowedReplica`) listening at ``podIP:port`` for each
pod that is Ready and not terminating, and stops it (like a killed pod: in-flight
requests get a short grace) when the pod stops being Ready, starts terminating or is
deleted. A pod that turns Ready again gets a fresh replica. Its methods block, like
:class:`~e2e.standin.cluster.BackgroundCluster`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from aiohttp import web
from kubernetes import client

from e2e.standin.api import make_replica_app
from e2e.standin.cluster import _listen
from e2e.standin.config import StandinConfig
from e2e.standin.engine import Engine
from e2e.standin.instrument import Instrument, MetricsFault, RequestRecord
from e2e.standin.metrics import EngineMetrics
from e2e.standin.pods import PodIPError, PodView, deployment_selector, loopback_ip

__all__ = ["FollowedReplica", "PodFollower", "ReplicaEvent"]

# Key of the problem recorded when listing the pods fails (pod names never contain "(").
_LIST_PROBLEM = "(listing pods)"
_WAIT_POLL_SECONDS = 0.05

_T = TypeVar("_T")


@dataclass(frozen=True)
class ReplicaEvent:
    """A replica starting or stopping, for tests that check when a pod was served."""

    at: float
    """Wall-clock time (``time.time()``)."""
    pod: str
    ip: str
    action: Literal["started", "stopped", "killed", "revived"]


class FollowedReplica:
    """The stand-in replica of one Ready pod: its engine, its request record and its ``/metrics`` fault.

    Methods that change the engine run on the follower's event loop (asyncio
    objects are not thread-safe); :attr:`engine` itself is for reading.
    """

    def __init__(self, owner: PodFollower, pod: PodView, ip: str) -> None:
        self.pod = pod.name
        self.uid = pod.uid
        self.ip = ip
        self.port = owner.port
        self.instrument = Instrument()
        self._owner = owner
        self._engine = self._new_engine()
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"FollowedReplica(pod={self.pod!r}, url={self.url!r}, serving={self.serving})"

    @property
    def url(self) -> str:
        """Base URL, ``http://podIP:port`` (no trailing slash); the OpenAI API is under ``/v1``."""
        return f"http://{self.ip}:{self.port}"

    @property
    def engine(self) -> Engine:
        """The replica's engine (queue state, metrics); change it only through this object's methods or :meth:`call`."""
        return self._engine

    @property
    def serving(self) -> bool:
        """Whether it is listening (False after :meth:`kill` until :meth:`revive`)."""
        return self._runner is not None

    def requests(self, path: str | None = None) -> list[RequestRecord]:
        """The requests this replica received, oldest first; only those for ``path`` (e.g. ``/metrics``) when given."""
        return self.instrument.snapshot(path)

    @property
    def metrics_fault(self) -> MetricsFault:
        """How ``/metrics`` currently misbehaves."""
        return self.instrument.metrics_fault

    def fail_metrics(self, fault: MetricsFault | str = MetricsFault.ERROR) -> None:
        """Make ``/metrics`` hang, answer 500 or answer garbage; ``MetricsFault.NONE`` heals it.

        Only ``/metrics`` is affected: the OpenAI routes keep serving.
        """
        self.instrument.metrics_fault = MetricsFault(fault)

    def pause(self) -> None:
        """Pause decoding: requests keep queueing, so the queue holds still for the test to observe."""
        self.call(lambda engine: engine.pause())

    def resume(self) -> None:
        """Resume decoding."""
        self.call(lambda engine: engine.resume())

    def report(
        self, *, waiting: int | None = None, running: int | None = None, kv_cache_usage: float | None = None
    ) -> None:
        """Show these queue gauges on ``/metrics`` instead of the real ones (see :meth:`Engine.report`)."""
        self.call(lambda engine: engine.report(waiting=waiting, running=running, kv_cache_usage=kv_cache_usage))

    def call(self, action: Callable[[Engine], _T]) -> _T:
        """Run ``action(engine)`` on the follower's event loop and return its result."""
        return self._owner._call(_run(lambda: action(self._engine)))

    def kill(self) -> None:
        """Stop listening while the pod stays Ready, like a crashed server the kubelet has not noticed yet."""
        self._owner._call(self._stop("killed"))

    def revive(self, *, fresh: bool = False) -> None:
        """Listen again after :meth:`kill`; ``fresh`` starts a new engine (counters from zero, as a restarted vLLM)."""
        self._owner._call(self._start("revived", fresh=fresh))

    def _new_engine(self) -> Engine:
        config = self._owner.config
        return Engine(config, EngineMetrics(config.model_name))

    async def _start(self, action: Literal["started", "revived"], *, fresh: bool = False) -> None:
        if self._runner is not None:
            return
        if fresh:
            self._engine = self._new_engine()
        app = make_replica_app(self._engine, [self.instrument.middleware])
        self._runner, _ = await _listen(app, self.ip, self.port)
        self._owner._events.append(ReplicaEvent(time.time(), self.pod, self.ip, action))

    async def _stop(self, action: Literal["stopped", "killed"]) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            self._owner._events.append(ReplicaEvent(time.time(), self.pod, self.ip, action))


class PodFollower:
    """Keeps one stand-in replica listening at ``podIP:port`` for each Ready pod matching a selector.

    Give either ``selector`` (a label selector) or ``deployment`` (its selector is
    used). Use as ``with PodFollower(api, ns, deployment="vllm", port=8000) as pods:``;
    on entry the pods already Ready are served. A pod IP outside 127.0.0.0/8 is
    never listened at: it raises :class:`PodIPError` from the next call (and from
    the ``with`` block's exit). Problems worth retrying (an address in use, a failed
    list) are kept in :attr:`problems` and retried at the next poll.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        *,
        port: int,
        selector: str | None = None,
        deployment: str | None = None,
        config: StandinConfig | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        if (selector is None) == (deployment is None):
            raise ValueError("give exactly one of selector= or deployment=")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be within 1-65535 (the pods' fixed serving port), got {port}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
        self.namespace = namespace
        self.port = port
        self.config = config or StandinConfig()
        self.poll_interval = poll_interval
        self._deployment = deployment
        self._selector = selector or ""
        # Its own connection pool: the test thread keeps using the caller's client meanwhile.
        self._api = client.ApiClient(api_client.configuration)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="standin-pod-follower", daemon=True)
        self._replicas: dict[str, FollowedReplica] = {}  # by pod UID
        self._events: list[ReplicaEvent] = []
        self._problems: dict[str, str] = {}
        self._error: PodIPError | None = None
        self._error_raised = False
        self._task: asyncio.Task[None] | None = None
        self._sync_lock: asyncio.Lock | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Self:
        """Resolve the selector, serve the pods Ready now, then follow in the background."""
        try:
            if self._deployment is not None:
                self._selector = deployment_selector(self._api, self.namespace, self._deployment)
            self._thread.start()
            self._call(self._begin())
            self._raise_error()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop following and stop every replica."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()
        self._api.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        if exc is None:
            self._raise_error()

    # -- what tests read --------------------------------------------------------------------------

    @property
    def selector(self) -> str:
        """The label selector the pods are listed with."""
        return self._selector

    @property
    def problems(self) -> dict[str, str]:
        """Current retryable problems, by pod name (or ``"(listing pods)"``), e.g. an address already in use."""
        return self._call(_run(lambda: dict(self._problems)))

    @property
    def events(self) -> list[ReplicaEvent]:
        """Every start and stop so far, oldest first."""
        return self._call(_run(lambda: list(self._events)))

    def replicas(self) -> dict[str, FollowedReplica]:
        """The replicas of the pods followed now, by pod name."""
        self._raise_error()
        return self._call(_run(lambda: {r.pod: r for r in self._replicas.values()}))

    def replica(self, pod: str) -> FollowedReplica:
        """The replica of pod ``pod``; a clear KeyError when that pod is not followed (not Ready, or gone)."""
        current = self.replicas()
        if pod not in current:
            raise KeyError(f"pod {pod} has no replica (followed: {sorted(current) or 'none'})")
        return current[pod]

    def sync(self) -> dict[str, FollowedReplica]:
        """List the pods and reconcile now, without waiting for the next poll; return :meth:`replicas`."""
        self._call(self._sync())
        return self.replicas()

    def wait_until(
        self, predicate: Callable[[dict[str, FollowedReplica]], bool], what: str, timeout: float = 30.0
    ) -> dict[str, FollowedReplica]:
        """Poll :meth:`replicas` until ``predicate`` holds; TimeoutError naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.replicas()
            if predicate(current):
                return current
            if time.monotonic() > deadline:
                problems = self.problems
                raise TimeoutError(
                    f"timed out after {timeout:.0f}s waiting for {what}; followed pods: {sorted(current) or 'none'}"
                    + (f"; problems: {problems}" if problems else "")
                )
            time.sleep(_WAIT_POLL_SECONDS)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[FollowedReplica]:
        """Wait until exactly ``count`` pods have a replica; return them sorted by pod name."""
        current = self.wait_until(lambda r: len(r) == count, f"{count} Ready pod(s) with a replica", timeout)
        return [current[name] for name in sorted(current)]

    # -- the loop's side ----------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _raise_error(self) -> None:
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            raise self._error

    async def _begin(self) -> None:
        self._sync_lock = asyncio.Lock()
        await self._sync()
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self._sync()
            except Exception as err:  # a follower must outlive a failed poll, as a daemon would
                self._problems[_LIST_PROBLEM] = f"following pods failed: {err!r}"

    def _list_pods(self) -> list[client.V1Pod]:
        core = client.CoreV1Api(self._api)
        return list(core.list_namespaced_pod(self.namespace, label_selector=self._selector, _request_timeout=5).items)

    async def _sync(self) -> None:
        assert self._sync_lock is not None
        async with self._sync_lock:
            try:
                pods = await asyncio.to_thread(self._list_pods)
            except Exception as err:
                self._problems[_LIST_PROBLEM] = f"listing pods ({self._selector}) failed: {err!r}"
                return
            self._problems.pop(_LIST_PROBLEM, None)
            wanted = {p.uid: p for p in map(PodView.of, pods) if p.serving}
            # Stop first: kwok hands a deleted pod's IP to the next pod. A replica leaves
            # the table only once it has stopped listening, and enters it only once it
            # listens, so what replicas() shows is what answers.
            gone = [r for uid, r in self._replicas.items() if uid not in wanted]
            await asyncio.gather(*(r._stop("stopped") for r in gone))
            for replica in gone:
                del self._replicas[replica.uid]
            for uid, pod in wanted.items():
                if uid not in self._replicas:
                    await self._add(pod)
            for name in [n for n in self._problems if n != _LIST_PROBLEM]:
                if name not in {p.name for p in wanted.values()}:
                    del self._problems[name]

    async def _add(self, pod: PodView) -> None:
        name = pod.name
        try:
            ip = loopback_ip(pod.ip, name)
        except PodIPError as err:
            self._problems[name] = str(err)
            self._error = self._error or err
            return
        replica = FollowedReplica(self, pod, ip)
        try:
            await replica._start("started")
        except OSError as err:
            self._problems[name] = f"cannot listen at {ip}:{self.port} for pod {name}: {err}"
            return
        self._problems.pop(name, None)
        self._replicas[replica.uid] = replica

    async def _shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        replicas, self._replicas = list(self._replicas.values()), {}
        await asyncio.gather(*(r._stop("stopped") for r in replicas))


async def _run(action: Callable[[], _T]) -> _T:
    """Run a plain callable on the follower's loop."""
    return action()
