"""LeaderElector's settings and Lease records (the election itself runs against the API server in e2e/test_lease.py)."""

from __future__ import annotations

import pytest
from kubernetes.client import ApiClient

from controller.kube.lease import LeaderElector, LeaseRecord


@pytest.mark.parametrize(
    ("lease_seconds", "renew_deadline", "retry"),
    [(15, 15, 2), (15, 10, 10), (15, 20, 2), (15, 10, 0)],
)
def test_timings_must_nest_so_fencing_holds(lease_seconds: int, renew_deadline: float, retry: float) -> None:
    # renew_deadline < lease_seconds is what lets a cut-off leader stop before anyone may take over.
    with pytest.raises(ValueError, match=r"retry .* < renew deadline .* < lease duration"):
        LeaderElector(
            ApiClient(),
            namespace="ns",
            name="l",
            identity="a",
            lease_seconds=lease_seconds,
            renew_deadline=renew_deadline,
            retry=retry,
        )


def test_identity_is_required() -> None:
    with pytest.raises(ValueError, match="identity must not be empty"):
        LeaderElector(ApiClient(), namespace="ns", name="l", identity="")


def test_a_new_elector_neither_leads_nor_knows_a_holder() -> None:
    elector = LeaderElector(ApiClient(), namespace="ns", name="l", identity="a")
    assert not elector.is_leader()
    assert elector.holder() is None


def test_lease_record_reads_a_released_or_partial_lease() -> None:
    assert LeaseRecord.from_lease({"spec": {"leaseDurationSeconds": 1}}) == LeaseRecord("", 1, None, None, 0)
    assert LeaseRecord.from_lease({}) == LeaseRecord("", 0, None, None, 0)
    record = LeaseRecord("pod-a", 15, "2026-12-01T09:00:00.000000Z", "2026-12-01T09:00:02.000000Z", 3)
    assert LeaseRecord.from_lease({"spec": record.spec()}) == record
    assert LeaseRecord("", 1, None, None, 0).spec()["holderIdentity"] is None  # released: no holder is written
