"""Leader election on a coordination.k8s.io/v1 Lease, as client-go does it, plus fencing.

Each try is a GET, then a create (no Lease yet) or a replace carrying the resourceVersion just read, so two
candidates can never both win: the second write gets 409 Conflict. Whether the holder's lease has run out
is judged on this process's monotonic clock, from the moment the record was last *seen to change* (as
client-go's ``observedTime``), never on the record's ``renewTime``: the candidates' wall clocks may
disagree.

Fencing, which client-go leaves to its callers: :meth:`LeaderElector.is_leader` is true only while the last
successful renewal is younger than ``renew_deadline``. Since ``renew_deadline < lease_seconds``, a leader
cut off from the API server stops acting before any other candidate may take the Lease over.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, ApiException

from controller.kube.client import api_error_message, format_micro_time, request_json

__all__ = ["LeaderElector", "LeaseRecord"]

_log = logging.getLogger("ebbtide.lease")

_JITTER = 1.2
"""client-go's JitterFactor for a candidate's retries: up to 1.2 × retry extra, so candidates spread out."""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The spec of a Lease as leader election reads it."""

    holder: str
    """holderIdentity; empty when nobody holds it (released)."""
    lease_seconds: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        """Read a Lease object's spec (JSON as served); missing fields read as empty."""
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        """The Lease spec to write."""
        out: dict[str, Any] = {"leaseDurationSeconds": self.lease_seconds, "leaseTransitions": self.transitions}
        out["holderIdentity"] = self.holder or None
        if self.acquire_time:
            out["acquireTime"] = self.acquire_time
        if self.renew_time:
            out["renewTime"] = self.renew_time
        return out


class LeaderElector:
    """Campaigns for one Lease and keeps it renewed; :meth:`is_leader` gates every write to the cluster."""

    def __init__(
        self,
        api: ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: int = 15,
        renew_deadline: float = 10.0,
        retry: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        """Defaults are client-go's (15 s lease, 10 s renew deadline, 2 s retry).

        ``identity`` must be unique per candidate (the pod name, plus a random suffix outside a cluster).
        """
        if not identity:
            raise ValueError("leader election identity must not be empty")
        if not 0 < retry < renew_deadline < lease_seconds:
            raise ValueError(
                f"leader election needs 0 < retry ({retry}) < renew deadline ({renew_deadline}) "
                f"< lease duration ({lease_seconds})"
            )
        self._api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = int(lease_seconds)
        self.renew_deadline = float(renew_deadline)
        self.retry = float(retry)
        self._monotonic = monotonic
        self._wall = wall
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._last_renew: float | None = None
        self._released = False
        self._was_leader = False
        # One request round at a time: a renewal in flight must not land after the release.
        self._lock = threading.Lock()

    # -- what callers read -------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True while this candidate holds the Lease and renewed it less than ``renew_deadline`` ago."""
        if self._last_renew is None or self._released:
            return False
        return self._monotonic() - self._last_renew < self.renew_deadline

    def holder(self) -> str | None:
        """The holder last seen on the Lease (this candidate included); None when unknown or released."""
        if self._observed is None or not self._observed.holder:
            return None
        return self._observed.holder

    # -- the campaign ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Try to acquire, then renew, every ``retry`` seconds until ``stop`` is set. Never raises on API errors."""
        while not stop.is_set() and not self._released:
            try:
                await asyncio.to_thread(self.try_acquire_or_renew)
            except Exception as e:  # a daemon task must survive anything the network throws at it
                _log.warning("leader election: lease %s/%s: %s", self.namespace, self.name, api_error_message(e))
            self._log_transition()
            delay = self.retry if self.is_leader() else self.retry * (1.0 + random.random() * _JITTER)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    def try_acquire_or_renew(self) -> bool:
        """One round (blocking): GET the Lease, then create it or take or renew it. True when this candidate holds it.

        After :meth:`release` it does nothing and returns False: a released candidate stays out.
        """
        with self._lock:
            if self._released:
                return False
            return self._try_acquire_or_renew()

    def _try_acquire_or_renew(self) -> bool:
        # Fencing counts from when this round *started*: the server commits a renewal no earlier than that,
        # so a slow answer can never stretch this candidate's leadership past what the others grant it.
        started = self._monotonic()
        now_wall = format_micro_time(self._wall())
        timeout = (min(2.0, self.renew_deadline / 2), self.renew_deadline / 2)
        try:
            lease = request_json(self._api, "GET", self._path, timeout=timeout)
        except ApiException as e:
            if e.status != 404:
                raise
            record = LeaseRecord(self.identity, self.lease_seconds, now_wall, now_wall, 0)
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": record.spec(),
            }
            try:
                request_json(self._api, "POST", self._path.rsplit("/", 1)[0], body=body, timeout=timeout)
            except ApiException as create_error:
                if create_error.status == 409:  # another candidate created it first
                    return False
                raise
            self._won(record, started)
            return True

        current = LeaseRecord.from_lease(lease)
        now = self._monotonic()
        if current != self._observed:
            self._observed = current
            self._observed_at = now
        held_by_other = bool(current.holder) and current.holder != self.identity
        if held_by_other and now < self._observed_at + max(current.lease_seconds, 1):
            self._last_renew = None
            return False
        if current.holder == self.identity:
            record = LeaseRecord(
                self.identity, self.lease_seconds, current.acquire_time or now_wall, now_wall, current.transitions
            )
        else:
            record = LeaseRecord(self.identity, self.lease_seconds, now_wall, now_wall, current.transitions + 1)
        body = dict(lease)
        body["spec"] = {**(lease.get("spec") or {}), **record.spec()}
        try:
            # The body carries the resourceVersion just read: a 409 means another candidate wrote in between.
            request_json(self._api, "PUT", self._path, body=body, timeout=timeout)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        self._won(record, started)
        return True

    def _won(self, record: LeaseRecord, started: float) -> None:
        self._observed = record
        self._observed_at = self._monotonic()
        self._last_renew = started

    def _log_transition(self) -> None:
        leading = self.is_leader()
        if leading != self._was_leader:
            if leading:
                _log.info("leader election: %s now leads (lease %s/%s)", self.identity, self.namespace, self.name)
            else:
                _log.warning("leader election: %s no longer leads (holder: %s)", self.identity, self.holder())
        self._was_leader = leading

    async def release(self) -> bool:
        """Give the Lease up at once (on SIGTERM), so another candidate leads within one retry.

        Stops leading first, then writes an empty holder with a 1 s lease, as client-go's ReleaseOnCancel.
        True when the Lease was released; False when this candidate did not hold it or the write failed.
        """
        held = self._observed is not None and self._observed.holder == self.identity
        self._released = True
        self._last_renew = None
        if self._was_leader:
            _log.info(
                "leader election: %s stops leading and releases lease %s/%s", self.identity, self.namespace, self.name
            )
        self._was_leader = False
        if not held:
            return False
        try:
            return await asyncio.to_thread(self._release)
        except Exception as e:
            _log.warning(
                "leader election: release of %s/%s failed: %s", self.namespace, self.name, api_error_message(e)
            )
            return False

    def _release(self) -> bool:
        with self._lock:
            return self._release_locked()

    def _release_locked(self) -> bool:
        timeout = (2.0, self.renew_deadline / 2)
        lease = request_json(self._api, "GET", self._path, timeout=timeout)
        current = LeaseRecord.from_lease(lease)
        if current.holder != self.identity:
            return False
        now_wall = format_micro_time(self._wall())
        record = LeaseRecord("", 1, now_wall, now_wall, current.transitions)
        body = dict(lease)
        body["spec"] = record.spec()
        try:
            request_json(self._api, "PUT", self._path, body=body, timeout=timeout)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        self._observed = record
        self._observed_at = self._monotonic()
        return True
