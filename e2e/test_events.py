"""The Event sink against the real kube-apiserver: Events on a GPUPool, aggregation of repeats, failures.

Each test drives :class:`EventSink` in its own event loop: ``emit`` queues, ``run`` writes in the
background, ``flush`` waits until the queue is empty; the Events are then read back from the server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import yaml

from controller.kube.client import format_time, request_json
from controller.kube.events import SPAM_BURST, SPAM_REFILL_SECONDS, EventSink, ObjectRef
from e2e.cluster import K8sCluster
from e2e.manifests import REPO, install_crds

pytestmark = pytest.mark.e2e

T0 = dt.datetime(2026, 12, 1, 9, 0, 0, tzinfo=dt.UTC)


def _gpupool(k8s_cluster: K8sCluster, namespace: str, name: str = "chat") -> ObjectRef:
    install_crds(k8s_cluster.api_client)
    body = yaml.safe_load((REPO / "examples" / "gpupool.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    created = request_json(
        k8s_cluster.api_client, "POST", f"/apis/ebbtide.dev/v1alpha1/namespaces/{namespace}/gpupools", body=body
    )
    meta = created["metadata"]
    return ObjectRef("ebbtide.dev/v1alpha1", "GPUPool", meta["name"], meta["namespace"], meta["uid"])


def _events(k8s_cluster: K8sCluster, ref: ObjectRef) -> list[dict[str, Any]]:
    found = request_json(
        k8s_cluster.api_client,
        "GET",
        f"/api/v1/namespaces/{ref.namespace}/events",
        query={"fieldSelector": f"involvedObject.uid={ref.uid}"},
    )
    return sorted(found["items"], key=lambda e: (e["firstTimestamp"], e["metadata"]["name"]))


def _drive(sink: EventSink, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        writer = asyncio.create_task(sink.run(stop))
        try:
            await body()
            assert await sink.flush(timeout=20), f"{sink.pending()} events still queued"
        finally:
            stop.set()
            await asyncio.wait_for(writer, timeout=20)

    asyncio.run(main())


def test_an_event_appears_on_the_gpupool(k8s_cluster: K8sCluster, namespace: str) -> None:
    ref = _gpupool(k8s_cluster, namespace)
    sink = EventSink(k8s_cluster.api_client, instance="controller-0")

    async def body() -> None:
        # A whole second (microsecond 0): the time the client's own serialiser would have mangled.
        sink.emit(ref, "Normal", "ScaledUp", "scaled vllm-llama-8b from 0 to 2 (prewarm)", T0)

    _drive(sink, body)
    [event] = _events(k8s_cluster, ref)
    assert event["type"] == "Normal" and event["reason"] == "ScaledUp"
    assert event["message"] == "scaled vllm-llama-8b from 0 to 2 (prewarm)"
    assert event["involvedObject"] == {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "GPUPool",
        "name": "chat",
        "namespace": namespace,
        "uid": ref.uid,
    }
    assert event["count"] == 1
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-12-01T09:00:00Z"
    assert event["reportingComponent"] == "ebbtide-controller"
    assert event["reportingInstance"] == "controller-0"
    assert event["source"] == {"component": "ebbtide-controller", "host": "controller-0"}
    assert event.get("eventTime") is None
    assert (sink.written, sink.failed, sink.dropped) == (1, 0, 0)


def test_five_repeats_make_one_event_with_count_five(k8s_cluster: K8sCluster, namespace: str) -> None:
    ref = _gpupool(k8s_cluster, namespace)
    sink = EventSink(k8s_cluster.api_client, instance="controller-0")

    async def body() -> None:
        for i in range(5):
            sink.emit(
                ref, "Warning", "MetricsUnavailable", "2 of 3 replicas did not answer", T0 + i * dt.timedelta(seconds=5)
            )
            await asyncio.sleep(0)  # interleave with the writer, as ticks would
        # Same reason, another message: its own Event.
        sink.emit(ref, "Warning", "MetricsUnavailable", "1 of 3 replicas did not answer", T0)

    _drive(sink, body)
    events = _events(k8s_cluster, ref)
    assert len(events) == 2, events
    [repeated] = [e for e in events if e["message"].startswith("2 of 3")]
    assert repeated["count"] == 5
    assert repeated["firstTimestamp"] == format_time(T0)
    assert repeated["lastTimestamp"] == format_time(T0 + dt.timedelta(seconds=20))
    [other] = [e for e in events if e["message"].startswith("1 of 3")]
    assert other["count"] == 1


def test_a_repeat_after_ten_minutes_or_of_a_deleted_event_starts_a_new_one(
    k8s_cluster: K8sCluster, namespace: str
) -> None:
    ref = _gpupool(k8s_cluster, namespace)
    sink = EventSink(k8s_cluster.api_client, instance="controller-0")
    reason, message = "ScaleDownDelayed", "holding 2 replicas until the delay ends"

    async def first() -> None:
        sink.emit(ref, "Normal", reason, message, T0)
        sink.emit(ref, "Normal", reason, message, T0 + dt.timedelta(minutes=9))
        sink.emit(ref, "Normal", reason, message, T0 + dt.timedelta(minutes=20))  # 11 min after the last

    _drive(sink, first)
    events = _events(k8s_cluster, ref)
    assert [e["count"] for e in events] == [2, 1]

    latest = events[-1]["metadata"]["name"]
    request_json(k8s_cluster.api_client, "DELETE", f"/api/v1/namespaces/{namespace}/events/{latest}")

    async def second() -> None:
        sink.emit(ref, "Normal", reason, message, T0 + dt.timedelta(minutes=21))

    _drive(sink, second)
    events = _events(k8s_cluster, ref)
    assert [e["count"] for e in events] == [2, 1]
    assert events[-1]["metadata"]["name"] != latest
    assert events[-1]["firstTimestamp"] == format_time(T0 + dt.timedelta(minutes=21))


def test_failures_are_counted_not_raised_and_the_writer_goes_on(k8s_cluster: K8sCluster, namespace: str) -> None:
    ref = _gpupool(k8s_cluster, namespace)
    gone = ObjectRef("ebbtide.dev/v1alpha1", "GPUPool", "ghost", "no-such-namespace-e2e", "00000000-dead")
    sink = EventSink(k8s_cluster.api_client, instance="controller-0")

    async def body() -> None:
        sink.emit(gone, "Warning", "DeploymentMissing", "deployment vllm not found", T0)
        sink.emit(ref, "Normal", "ScaledDown", "scaled from 2 to 1", T0)

    _drive(sink, body)
    assert (sink.written, sink.failed) == (1, 1)
    assert [e["reason"] for e in _events(k8s_cluster, ref)] == ["ScaledDown"]


def test_the_queue_is_bounded_and_emits_from_other_threads_are_written(k8s_cluster: K8sCluster, namespace: str) -> None:
    ref = _gpupool(k8s_cluster, namespace)
    sink = EventSink(k8s_cluster.api_client, instance="controller-0", max_queue=3)
    for i in range(5):  # nobody drains yet: the two oldest are dropped
        sink.emit(ref, "Normal", f"Reason{i}", "queued while the writer was down", T0)
    assert sink.dropped == 2 and sink.pending() == 3

    async def body() -> None:
        await sink.flush(timeout=20)
        thread = threading.Thread(target=sink.emit, args=(ref, "Normal", "FromThread", "emitted off the loop", T0))
        thread.start()
        thread.join()

    _drive(sink, body)
    reasons = sorted(e["reason"] for e in _events(k8s_cluster, ref))
    assert reasons == ["FromThread", "Reason2", "Reason3", "Reason4"]


def test_a_flood_of_distinct_events_is_held_to_the_spam_filter(k8s_cluster: K8sCluster, namespace: str) -> None:
    ref = _gpupool(k8s_cluster, namespace)
    sink = EventSink(k8s_cluster.api_client, instance="controller-0")

    async def flood() -> None:
        for i in range(SPAM_BURST + 5):  # a message that changes every tick: nothing to aggregate
            sink.emit(ref, "Normal", "QueueHigh", f"queue {i} above target", T0 + dt.timedelta(seconds=i))
        # A repeat of an Event already written is still counted, spam filter or not.
        sink.emit(ref, "Normal", "QueueHigh", "queue 0 above target", T0 + dt.timedelta(seconds=40))

    _drive(sink, flood)
    assert (sink.written, sink.suppressed) == (SPAM_BURST + 1, 5)
    events = _events(k8s_cluster, ref)
    assert len(events) == SPAM_BURST
    assert [e["count"] for e in events if e["message"] == "queue 0 above target"] == [2]

    async def later() -> None:  # the bucket refills one Event per SPAM_REFILL_SECONDS
        sink.emit(ref, "Normal", "QueueHigh", "queue back", T0 + dt.timedelta(seconds=30 + SPAM_REFILL_SECONDS))

    _drive(sink, later)
    assert len(_events(k8s_cluster, ref)) == SPAM_BURST + 1
