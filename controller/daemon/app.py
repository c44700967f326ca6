"""The daemon's main: builds every part, runs the background tasks and the tick loop, stops on SIGTERM.

Background tasks fill caches and drain queues: list+watch of GPUPools, Deployments, Pods and HPAs
(`snapshots`), the demand poller (each pool's pods or Prometheus, and the gateway, each read bounded by
its timeout), leader election, the Event sink and the status writer, and the health server. The tick
reads only those caches: it syncs the pool table, steps every pool through the ControlLoop (whose only
network call is the scale patch) and sleeps until the next tick or the next schedule boundary of any
pool, whichever comes first. Only the leader (or every replica with --no-leader-elect) steps pools;
a standby keeps its caches warm and re-reads the pools' persisted state when it takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from controller.daemon.cluster import KubeCluster
from controller.daemon.codec import decode_state_checked, encode_state
from controller.daemon.health import HealthServer
from controller.daemon.logs import setup_logging
from controller.daemon.poolmetrics import MetricsRecorder, PoolMetrics
from controller.daemon.pooltable import PoolTable
from controller.daemon.reconciler import PassResult, Reconciler, pool_object_ref
from controller.daemon.recorder import KubeRecorder
from controller.daemon.reporting import DaemonLedger, StatusComposer
from controller.daemon.secrets import SecretCache, secret_refs
from controller.daemon.settings import LEADER, POOLS, SCALES, TICK_SECONDS, TICKS, Settings
from controller.daemon.snapshots import Key, Snapshots
from controller.daemon.statuswriter import StatusWriter
from controller.daemon.wakeups import active_window
from controller.demand.poller import DemandPoller
from controller.kube.client import KubeConfigError, api_client
from controller.kube.events import EventSink, ObjectRef
from controller.kube.lease import LeaderElector
from controller.loop import Ports
from controller.ports import NoData, PoolRef, StepReport
from policies.spec import GPUPoolSpec
from policies.types import PolicyState

__all__ = ["Daemon", "Settings", "main"]

log = logging.getLogger("ebbtide.controller")

_SYNC_TIMEOUT_SECONDS = 30.0
_WORKER_THREADS = 24


class _WallClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


def _not_read_yet(reading: object) -> bool:
    return isinstance(reading, NoData) and reading.reason.startswith("not read yet")


def _decode(text: str | None, now: dt.datetime) -> tuple[PolicyState, str]:
    state, why = decode_state_checked(text, now)
    return state, why or ""


class Daemon:
    """All parts of one controller process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api = api_client(settings.kubeconfig)
        # Watches hold one connection each; the scale patch, Events and status need their own.
        self.api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 16
        self.clock = _WallClock()
        self.stop = asyncio.Event()
        self.wake = asyncio.Event()
        self.snapshots = Snapshots(
            self.api,
            namespace=settings.namespace,
            gateway_namespace=settings.gateway_namespace,
            gateway_selector=settings.gateway_selector or None,
            on_change=self._changed,
        )
        self.table = PoolTable(_decode)
        self.elector = (
            LeaderElector(
                self.api, namespace=settings.lease_namespace, name=settings.lease_name, identity=settings.identity
            )
            if settings.leader_elect
            else None
        )
        self.events = EventSink(self.api, instance=settings.identity)
        self.status_writer = StatusWriter(self.api, may_write=self.leading)
        self.http = httpx.AsyncClient(trust_env=False)
        has_gateway = bool(settings.gateway_selector or settings.gateway_urls)
        self.poller = DemandPoller(http=self.http, gateway_endpoints=self._gateway_endpoints if has_gateway else None)
        self.cluster = KubeCluster(self.api, self.snapshots, self.table, leading=self.leading, now=self.clock.now)
        self.ledger = DaemonLedger(self.snapshots, self.table, self.poller)
        self.composer = StatusComposer(self.ledger)
        self.recorder = MetricsRecorder(
            KubeRecorder(
                self.events,
                self._on_status,
                logging.getLogger("ebbtide.decisions"),
                object_ref=self._object_ref,
                window=self._window,
            ),
            PoolMetrics(leading=self.leading),
            spec=self._spec,
            window=self._window,
        )
        ports = Ports(self.clock, self.cluster, self.poller, self.ledger, self.recorder)
        self.reconciler = Reconciler(
            ports=ports,
            snapshots=self.snapshots,
            table=self.table,
            events=self.events,
            recorder=self.recorder,
            build_status=self.composer.build,
            submit_status=self.status_writer.submit,
            dry_run=settings.dry_run,
        )
        self.last_tick: float | None = None
        self.was_leader = False
        self._tasks: list[asyncio.Task[None]] = []
        self._demand_pods: dict[Key, tuple[object, ...]] = {}
        self._feed_due = True
        self.secrets = SecretCache(self.api)

    # -- callbacks -----------------------------------------------------------------------------------

    def _changed(self, kind: str, event: str, key: Key) -> None:
        # A new, deleted or edited GPUPool is acted on at once rather than on the next tick; the tick
        # itself tells a spec change from the echo of its own status write.
        if kind == "gpupools":
            self.wake.set()
        self._feed_due = True  # pods came or went: the demand poller must read the new set soon

    async def _feeder(self) -> None:
        """Hand pod changes to the demand poller within a quarter second, not a tick later."""
        while not self.stop.is_set():
            if self._feed_due:
                self._feed_due = False
                try:
                    # Only the pools already in the table: a new pool is added by the pass it wakes.
                    self._feed_poller()
                except Exception:  # keep feeding whatever one pool's spec did
                    log.exception("updating the demand poller failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.25)

    def _on_status(self, pool: PoolRef, step: StepReport) -> None:
        live = self.table.pools.get((pool.namespace, pool.name))
        if live is not None:
            live.step = step

    def _object_ref(self, pool: PoolRef) -> ObjectRef | None:
        live = self.table.pools.get((pool.namespace, pool.name))
        return pool_object_ref(live) if live is not None else None

    def _spec(self, pool: PoolRef) -> GPUPoolSpec | None:
        live = self.table.pools.get((pool.namespace, pool.name))
        return live.spec if live is not None else None

    def _window(self, pool: PoolRef, now: dt.datetime) -> str | None:
        live = self.table.pools.get((pool.namespace, pool.name))
        return active_window(live.spec, now) if live is not None and live.spec is not None else None

    def _gateway_endpoints(self) -> Sequence[str]:
        urls = [u.rstrip("/") + "/metrics" for u in self.settings.gateway_urls]
        pods = self.snapshots.gateway_pods
        if pods is not None:
            urls += [
                f"http://{p.ip}:{self.settings.gateway_port}/metrics" for p in pods.items.values() if p.ready and p.ip
            ]
        return urls

    def leading(self) -> bool:
        """Whether this replica may act (it holds the Lease, or election is off)."""
        return self.elector is None or self.elector.is_leader()

    def live(self) -> tuple[bool, str]:
        """/healthz: the loop ticked recently."""
        if self.last_tick is None:
            return (self.snapshots.synced() or time.monotonic() - self._started < 60, "starting")
        age = time.monotonic() - self.last_tick
        limit = 3 * self.settings.tick_seconds + 30
        return (age < limit, f"last tick {age:.0f} s ago (limit {limit:.0f} s)")

    def ready(self) -> tuple[bool, str]:
        """/readyz: caches synced and this replica leads (or election is off)."""
        if not self.snapshots.synced():
            errors = self.snapshots.errors()
            return False, "caches not synced" + (f": {errors}" if errors else "")
        if not self.leading():
            holder = self.elector.holder() if self.elector is not None else None
            return False, f"not the leader (holder: {holder or 'unknown'})"
        return True, "leading" if self.elector is not None else "ok (leader election off)"

    # -- the pass ------------------------------------------------------------------------------------

    def _feed_poller(self) -> None:
        """Tell the demand poller each pool's spec and pods whenever they change; forget deleted pools."""
        seen: set[Key] = set()
        for pool in self.table:
            if pool.spec is None:
                continue
            deployment = self.snapshots.deployments.items.get((pool.ref.deployment_namespace, pool.ref.deployment))
            pods = self.snapshots.pods_of(deployment) if deployment is not None else []
            refs = secret_refs(pool.spec, pool.key[0])
            self.secrets.want(refs)
            secrets = self.secrets.values(refs)
            signature = (pool.ref, pool.spec, tuple(pods), tuple(sorted(secrets.items())))
            seen.add(pool.key)
            if self._demand_pods.get(pool.key) != signature:
                self._demand_pods[pool.key] = signature
                self.poller.set_pool(pool.ref, pool.spec, pods, secrets)
        for key in list(self._demand_pods):
            if key not in seen:
                ref = self._demand_pods.pop(key)[0]
                if isinstance(ref, PoolRef):
                    self.poller.remove_pool(ref)
                    self.recorder.forget(ref)

    def run_pass(self) -> PassResult:
        """Step every pool once (the caller checked leadership)."""
        started = time.perf_counter()
        now = self.clock.now()
        self._sync_table()
        result = self.reconciler.run_pass(now)
        TICK_SECONDS.observe(time.perf_counter() - started)
        TICKS.inc()
        SCALES.inc(result.applied)
        POOLS.set(result.pools)
        self.last_tick = time.monotonic()
        return result

    def _sync_table(self) -> None:
        self.table.sync(self.snapshots.pools.items, self.clock.now())
        self.table.refresh_refusals(self.snapshots.deployments.items)
        self._feed_poller()

    # -- tasks ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background tasks and the health server."""
        self._started = time.monotonic()
        self._spawn(self.snapshots.run(self.stop), "snapshots")
        self._spawn(self.poller.run(self.stop), "demand")
        self._spawn(self.events.run(self.stop), "events")
        self._spawn(self.status_writer.run(self.stop), "status")
        self._spawn(self.secrets.run(self.stop), "secrets")
        self._spawn(self._feeder(), "demand feeder")
        if self.elector is not None:
            self._spawn(self.elector.run(self.stop), "leader election")
        self.health: HealthServer | None = None
        if self.settings.metrics_addr is not None:
            host, port = self.settings.metrics_addr
            self.health = HealthServer(host, port, live=self.live, ready=self.ready)
            bound = await self.health.start()
            log.info("serving /metrics, /healthz and /readyz on %s:%d", host, bound)

    def _spawn(self, coro: object, name: str) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        task.set_name(name)
        self._tasks.append(task)

    async def shutdown(self) -> None:
        """Stop everything: persist each pool's latest state, release the Lease (a standby takes over in
        ~retry, reading that state), then flush."""
        if self.leading():
            if self.was_leader:
                self._persist_states()
            # Written while still leading: after the release the writer drops what is left (fencing).
            await self.status_writer.flush(5.0)
            await self.events.flush(5.0)
        if self.elector is not None and self.elector.is_leader():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.elector.release(), 5.0)
        await self.events.flush(5.0)
        await self.status_writer.flush(5.0)
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 20.0)
        if self.health is not None:
            await self.health.stop()
        await self.http.aclose()
        self.api.close()  # type: ignore[no-untyped-call]

    def _persist_states(self) -> None:
        """Write every pool's current PolicyState (between meaningful changes only the last one was
        written), so the next leader resumes exactly where this one stopped."""
        for pool in self.table:
            if pool.outcome is None or pool.spec is None:
                continue
            text = encode_state(pool.state)
            if pool.status.get("policyState") != text:
                pool.status = {**pool.status, "policyState": text}
                self.status_writer.submit(pool.key[0], pool.key[1], {"policyState": text})

    async def wait_first_reads(self, timeout: float) -> None:
        """Wait until the poller has read every pool once (or `timeout`): --once decides on real data."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.clock.now()
            waiting = [p for p in self.table if p.spec is not None and _not_read_yet(self.poller.sample(p.ref, now))]
            if not waiting:
                return
            await asyncio.sleep(0.05)
        log.warning("demand not read for every pool within %.0f s; those pools hold (no data)", timeout)

    async def once(self) -> int:
        """One pass over every pool, then exit: 0 when every pool was read, 1 otherwise."""
        if not await self.snapshots.wait_synced(_SYNC_TIMEOUT_SECONDS, give_up_on_refusal=True):
            for kind, error in sorted(self.snapshots.errors().items()):
                log.error("cannot list %s: %s", kind, error)
            if not self.snapshots.errors():
                log.error("could not list the cluster within %.0f s", _SYNC_TIMEOUT_SECONDS)
            return 1
        if self.elector is not None:
            deadline = time.monotonic() + self.elector.lease_seconds + 2 * self.elector.retry
            while not self.elector.is_leader() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if not self.elector.is_leader():
                log.error(
                    "another controller leads (holder %s); use --dry-run or --no-leader-elect", self.elector.holder()
                )
                return 1
        self._sync_table()
        timeouts = [p.spec.metrics.scrape_timeout_seconds for p in self.table if p.spec is not None]
        await self.wait_first_reads(max(timeouts, default=0.0) + 3.0)
        result = self.run_pass()
        for failure in result.failed:
            log.error("pool %s", failure)
        log.info("one pass over %d pools: %d scaled, %d failed", result.pools, result.applied, len(result.failed))
        return 1 if result.failed else 0

    async def _sleep_until(self, next_tick: float) -> None:
        """Sleep until the next tick or the next schedule boundary, or until a GPUPool really changed."""
        while not self.stop.is_set():
            delay = next_tick - time.monotonic()
            try:
                boundary = self.reconciler.next_boundary(self.clock.now())
            except Exception:  # a schedule that cannot be computed wakes the pool at the tick only
                log.exception("computing the next schedule boundary failed")
                boundary = None
            if boundary is not None:
                # A millisecond past the boundary, so the policy sees the new side of it.
                delay = min(delay, (boundary.at - self.clock.now()).total_seconds() + 0.001)
            if delay <= 0:
                return
            waiters = [asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(self.wake.wait())]
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if not self.wake.is_set():
                return
            self.wake.clear()
            # The echo of our own status write changes no spec: keep sleeping.
            if self.table.sync(self.snapshots.pools.items, self.clock.now()):
                return

    async def forever(self) -> int:
        """Tick until SIGTERM: every pass at most one tick apart, and at every schedule boundary."""
        await self.snapshots.wait_synced(_SYNC_TIMEOUT_SECONDS)
        next_tick = time.monotonic()
        while not self.stop.is_set():
            leading = self.leading()
            LEADER.set(1 if leading else 0)
            if leading and not self.was_leader:
                # Taking over: the previous leader kept writing the pools' state; start from what it wrote.
                self.table.pools.clear()
                log.info("acting as leader (%s)", self.settings.identity)
            elif self.was_leader and not leading:
                log.warning("lost the leadership; standing by")
            self.was_leader = leading
            try:
                if leading and self.snapshots.synced():
                    self.run_pass()
                else:
                    self._sync_table()
                    self.last_tick = time.monotonic()
            except Exception:  # a bug in one pass must not end the daemon; /healthz shows a loop that stalls
                log.exception("the pass failed; trying again at the next tick")
            next_tick = max(next_tick + self.settings.tick_seconds, time.monotonic())
            await self._sleep_until(next_tick)
        return 0


async def _amain(settings: Settings) -> int:
    loop = asyncio.get_running_loop()
    # Each watch holds a worker thread for its whole life; the default pool (cores + 4) would leave the
    # Lease renewal, the scale patch and the status writes waiting behind them.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=_WORKER_THREADS, thread_name_prefix="ebbtide"))
    daemon = Daemon(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop.set)
    await daemon.start()
    try:
        if settings.once:
            return await daemon.once()
        return await daemon.forever()
    finally:
        await daemon.shutdown()


def main(settings: Settings) -> int:
    """Run the controller until SIGTERM (or one pass with --once); the process exit code."""
    setup_logging(settings.log_format, settings.log_level)
    try:
        return asyncio.run(_amain(settings))
    except KubeConfigError as exc:
        log.error("%s", exc)
        return 2
