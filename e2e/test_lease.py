"""Leader election against the real kube-apiserver: one leader, hand-over on release and on death, fencing.

Durations are shortened (seconds, not client-go's 15/10/2) so the cases run in seconds; the algorithm is
the same. The fencing case cuts the leader off from the API server with a loopback TCP proxy that stops
forwarding, as a network partition would, and checks it stops leading before its Lease can expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable

import pytest
from kubernetes import client

from controller.kube.client import ApiException, api_client, format_micro_time, request_json
from controller.kube.lease import LeaderElector
from e2e.cluster import K8sCluster

pytestmark = pytest.mark.e2e

LEASE = "ebbtide-controller"


def _lease(k8s_cluster: K8sCluster, namespace: str) -> dict[str, object]:
    lease: dict[str, object] = request_json(
        k8s_cluster.api_client, "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"
    )
    return lease


def _spec(k8s_cluster: K8sCluster, namespace: str) -> dict[str, object]:
    spec = _lease(k8s_cluster, namespace)["spec"]
    assert isinstance(spec, dict)
    return spec


def _elector(
    api: client.ApiClient,
    namespace: str,
    identity: str,
    lease_seconds: int = 15,
    renew_deadline: float = 10.0,
    retry: float = 2.0,
) -> LeaderElector:
    return LeaderElector(
        api,
        namespace=namespace,
        name=LEASE,
        identity=identity,
        lease_seconds=lease_seconds,
        renew_deadline=renew_deadline,
        retry=retry,
    )


async def _until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Seconds until ``check()`` holds; fails naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - start


class Campaign:
    """Electors running in the test's event loop, each with its own stop event, and a watch for overlap."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self.electors: dict[str, LeaderElector] = {}
        self.overlaps = 0
        self._watch: asyncio.Task[None] | None = None

    def start(self, elector: LeaderElector) -> None:
        stop = asyncio.Event()
        self.electors[elector.identity] = elector
        self.tasks[elector.identity] = (stop, asyncio.create_task(elector.run(stop)))
        if self._watch is None:
            self._watch = asyncio.create_task(self._check_overlap())

    async def _check_overlap(self) -> None:
        while True:
            if sum(e.is_leader() for e in self.electors.values()) > 1:
                self.overlaps += 1
            await asyncio.sleep(0.01)

    def leaders(self) -> list[str]:
        return [name for name, e in self.electors.items() if e.is_leader()]

    async def stop(self, identity: str) -> None:
        stop, task = self.tasks.pop(identity)
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    async def close(self) -> None:
        for identity in list(self.tasks):
            await self.stop(identity)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch


def _run(scenario: Callable[[Campaign], Awaitable[None]]) -> None:
    async def main() -> None:
        campaign = Campaign()
        try:
            await scenario(campaign)
        finally:
            await campaign.close()
        assert campaign.overlaps == 0, f"two electors led at once in {campaign.overlaps} samples"

    asyncio.run(main())


def test_defaults_write_a_client_go_lease_and_release_empties_it(k8s_cluster: K8sCluster, namespace: str) -> None:
    elector = _elector(k8s_cluster.api_client, namespace, "pod-a")
    assert (elector.lease_seconds, elector.renew_deadline, elector.retry) == (15, 10.0, 2.0)
    assert elector.try_acquire_or_renew()
    assert elector.is_leader() and elector.holder() == "pod-a"
    spec = _spec(k8s_cluster, namespace)
    assert spec["holderIdentity"] == "pod-a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    # MicroTime: six fractional digits, UTC.
    assert isinstance(spec["renewTime"], str) and len(spec["renewTime"].split(".")[1]) == 7

    assert elector.try_acquire_or_renew()  # a renewal keeps the acquire time
    renewed = _spec(k8s_cluster, namespace)
    assert renewed["acquireTime"] == spec["acquireTime"] and renewed["renewTime"] != spec["renewTime"]

    assert asyncio.run(elector.release())
    assert not elector.is_leader() and elector.holder() is None
    released = _spec(k8s_cluster, namespace)
    assert "holderIdentity" not in released or not released["holderIdentity"]
    assert released["leaseDurationSeconds"] == 1
    assert not elector.try_acquire_or_renew(), "a released elector must stay out"


def test_two_electors_exactly_one_leads(k8s_cluster: K8sCluster, namespace: str) -> None:
    async def scenario(campaign: Campaign) -> None:
        for identity in ("pod-a", "pod-b"):
            campaign.start(
                _elector(k8s_cluster.api_client, namespace, identity, lease_seconds=4, renew_deadline=3, retry=0.3)
            )
        await _until("a leader", lambda: len(campaign.leaders()) == 1, timeout=10)
        leader = campaign.leaders()[0]
        await asyncio.sleep(3.0)  # several renewals: the same one keeps leading, the other follows
        assert campaign.leaders() == [leader]
        assert _spec(k8s_cluster, namespace)["holderIdentity"] == leader
        for elector in campaign.electors.values():
            assert elector.holder() == leader

    _run(scenario)


def test_a_dead_leader_is_replaced_within_the_lease(k8s_cluster: K8sCluster, namespace: str) -> None:
    lease_seconds = 4

    async def scenario(campaign: Campaign) -> None:
        a = _elector(
            k8s_cluster.api_client, namespace, "pod-a", lease_seconds=lease_seconds, renew_deadline=3, retry=0.3
        )
        campaign.start(a)
        await _until("pod-a leads", a.is_leader, timeout=10)
        campaign.start(
            _elector(
                k8s_cluster.api_client, namespace, "pod-b", lease_seconds=lease_seconds, renew_deadline=3, retry=0.3
            )
        )
        await asyncio.sleep(1.0)
        assert campaign.leaders() == ["pod-a"]
        await campaign.stop("pod-a")  # dies without releasing: pod-b must wait the lease out
        waited = await _until("pod-b leads", lambda: campaign.leaders() == ["pod-b"], timeout=lease_seconds + 6)
        # Not before the lease could have run out (less one retry of observation lag), not much after.
        assert lease_seconds - 1.5 <= waited <= lease_seconds + 3, waited
        spec = _spec(k8s_cluster, namespace)
        assert spec["holderIdentity"] == "pod-b" and spec["leaseTransitions"] == 1

    _run(scenario)


def test_release_hands_over_within_a_retry(k8s_cluster: K8sCluster, namespace: str) -> None:
    async def scenario(campaign: Campaign) -> None:
        # A long lease: only a release can explain a quick hand-over.
        a = _elector(k8s_cluster.api_client, namespace, "pod-a", lease_seconds=30, renew_deadline=20, retry=0.3)
        campaign.start(a)
        await _until("pod-a leads", a.is_leader, timeout=10)
        campaign.start(
            _elector(k8s_cluster.api_client, namespace, "pod-b", lease_seconds=30, renew_deadline=20, retry=0.3)
        )
        await asyncio.sleep(1.0)
        await campaign.stop("pod-a")
        assert await a.release()
        assert not a.is_leader()
        waited = await _until("pod-b leads", lambda: campaign.leaders() == ["pod-b"], timeout=5)
        assert waited < 0.3 * 2.2 + 1.0, waited
        assert _spec(k8s_cluster, namespace)["holderIdentity"] == "pod-b"

    _run(scenario)


def test_expiry_is_judged_on_local_observation_not_on_renew_time(k8s_cluster: K8sCluster, namespace: str) -> None:
    # A Lease whose renewTime is an hour old, e.g. written by a candidate whose clock is wrong: a newcomer
    # must still give the holder a full lease duration from when it first saw the record.
    an_hour_ago = format_micro_time(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    body = {
        "metadata": {"name": LEASE},
        "spec": {
            "holderIdentity": "ghost",
            "leaseDurationSeconds": 2,
            "renewTime": an_hour_ago,
            "acquireTime": an_hour_ago,
            "leaseTransitions": 3,
        },
    }
    request_json(
        k8s_cluster.api_client, "POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", body=body
    )
    elector = _elector(k8s_cluster.api_client, namespace, "pod-a", lease_seconds=4, renew_deadline=3, retry=0.3)
    start = time.monotonic()
    assert not elector.try_acquire_or_renew()
    assert elector.holder() == "ghost"
    while not elector.try_acquire_or_renew():
        assert time.monotonic() - start < 6
        time.sleep(0.1)
    assert time.monotonic() - start >= 2.0
    spec = _spec(k8s_cluster, namespace)
    assert spec["holderIdentity"] == "pod-a" and spec["leaseTransitions"] == 4


def test_a_conflicting_write_loses_the_race(k8s_cluster: K8sCluster, namespace: str) -> None:
    # Two candidates read the same free Lease; the second write carries a stale resourceVersion: 409.
    a = _elector(k8s_cluster.api_client, namespace, "pod-a", lease_seconds=4, renew_deadline=3, retry=0.3)
    assert a.try_acquire_or_renew()
    assert asyncio.run(a.release())
    stale = _lease(k8s_cluster, namespace)
    b = _elector(k8s_cluster.api_client, namespace, "pod-b", lease_seconds=4, renew_deadline=3, retry=0.3)
    assert b.try_acquire_or_renew()
    stale_spec = stale["spec"]
    assert isinstance(stale_spec, dict)
    stale["spec"] = {**stale_spec, "holderIdentity": "pod-c"}
    with pytest.raises(ApiException) as conflict:
        request_json(
            k8s_cluster.api_client,
            "PUT",
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}",
            body=stale,
        )
    assert conflict.value.status == 409
    assert _spec(k8s_cluster, namespace)["holderIdentity"] == "pod-b"


class Partition:
    """A loopback TCP proxy to the API server that can stop forwarding, as a network partition would."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.open = asyncio.Event()
        self.open.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await self.open.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.append(up_writer)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.open.wait()  # partitioned: bytes stop flowing, connections stay up
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        self.open.set()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


def test_a_leader_cut_off_stops_leading_before_its_lease_expires(k8s_cluster: K8sCluster, namespace: str) -> None:
    lease_seconds, renew_deadline = 4, 2.5
    upstream = k8s_cluster.api_client.configuration.host.rsplit(":", 1)[1]

    async def scenario(campaign: Campaign) -> None:
        partition = Partition(int(upstream))
        port = await partition.start()
        cut_api = api_client(str(k8s_cluster.kubeconfig))
        # The serving certificate names 127.0.0.1, whatever the port: TLS still verifies through the proxy.
        cut_api.configuration.host = f"https://127.0.0.1:{port}"
        try:
            a = _elector(
                cut_api, namespace, "pod-a", lease_seconds=lease_seconds, renew_deadline=renew_deadline, retry=0.3
            )
            campaign.start(a)
            await _until("pod-a leads", a.is_leader, timeout=10)
            campaign.start(
                _elector(
                    k8s_cluster.api_client,
                    namespace,
                    "pod-b",
                    lease_seconds=lease_seconds,
                    renew_deadline=renew_deadline,
                    retry=0.3,
                )
            )
            await asyncio.sleep(1.0)
            assert campaign.leaders() == ["pod-a"]

            partition.open.clear()
            cut_at = time.monotonic()
            fenced = await _until("pod-a stops leading", lambda: not a.is_leader(), timeout=renew_deadline + 1)
            # It stopped on its own clock, while the Lease still names it and nobody else may take over.
            assert fenced <= renew_deadline + 0.1, fenced
            assert _spec(k8s_cluster, namespace)["holderIdentity"] == "pod-a"
            assert campaign.leaders() == []
            await _until("pod-b leads", lambda: campaign.leaders() == ["pod-b"], timeout=lease_seconds + 5)
            assert time.monotonic() - cut_at >= lease_seconds - 1.5

            partition.open.set()  # healed: pod-a finds pod-b holding and follows
            await asyncio.sleep(2.0)
            assert campaign.leaders() == ["pod-b"] and a.holder() == "pod-b"
        finally:
            await campaign.close()
            await partition.close()
            cut_api.close()  # type: ignore[no-untyped-call]

    _run(scenario)
