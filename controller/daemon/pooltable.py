"""The table of live pools: each GPUPool's spec, generation, remembered PolicyState and last outcome,
and the rules that refuse a pool (pure, over the snapshots' values).

A pool is refused, with a condition and a Warning Event, when its spec is invalid, its Deployment is
missing, or another pool already targets the same Deployment (the older pool keeps it). A pool whose
Deployment an HPA (or another scaler) targets is not refused but never scaled: it decides and reports
with ScalingActive=False naming the owner. The other pools go on in every case.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from controller.daemon.snapshots import DeploymentInfo, HpaInfo, Key, is_paused
from controller.kube.pods import parse_time
from controller.loop import Outcome
from controller.ports import PoolRef, StepReport
from controller.validate import field_path
from policies.spec import GPUPoolSpec
from policies.types import PolicyState

__all__ = ["LivePool", "PoolTable", "Refusal", "refusal_of", "scaling_owner", "spec_problem"]

StateDecoder = Callable[[str | None, dt.datetime], tuple[PolicyState, str]]
"""(persisted text, now) -> (state, note); a note says why the state is fresh ("" when restored)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a pool is not reconciled: a condition reason (CamelCase) and a message naming the problem."""

    reason: str
    message: str


@dataclass(slots=True)
class LivePool:
    """One GPUPool as the daemon holds it between ticks."""

    key: Key
    uid: str
    ref: PoolRef
    created: dt.datetime | None
    generation: int | None
    spec: GPUPoolSpec | None
    invalid: str
    """The spec's validation problems ("" when valid); the API server's schema catches most first."""
    paused: bool
    state: PolicyState
    state_note: str
    persisted_state: PolicyState
    """The state as last written to the status (persisted only when it changes meaningfully)."""
    status: dict[str, Any] = field(default_factory=dict)
    """The status as last written or read: the base for the next write and what survives a restart."""
    outcome: Outcome | None = None
    step: StepReport | None = None
    refusal: Refusal | None = None
    last_written: int | None = None
    """Replicas Ebbtide last wrote (or found at start): a different live value is a manual change."""
    manual_until: dt.datetime | None = None
    """After a manual change, Ebbtide does not fight it until then (one scale-down delay)."""
    last_scale_time: dt.datetime | None = None


def spec_problem(raw_spec: object) -> tuple[GPUPoolSpec | None, str]:
    """Validate a GPUPool's spec; (spec, "") or (None, every problem with its field path), worded as
    `ebbtide validate` words them."""
    try:
        return GPUPoolSpec.model_validate(raw_spec), ""
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            elif error["type"] == "missing":
                message = "required field is missing"
            path = field_path(("spec", *error["loc"]))
            problems.append(f"{path}: {message}")
        return None, "; ".join(problems)


def _target(pool: LivePool) -> Key:
    return (pool.ref.deployment_namespace, pool.ref.deployment)


def refusal_of(pool: LivePool, pools: Iterable[LivePool], deployments: Mapping[Key, DeploymentInfo]) -> Refusal | None:
    """Why this pool cannot be reconciled now, or None: invalid spec, missing Deployment, or a Deployment
    already claimed by an older pool (created earlier; the name breaks ties)."""
    if pool.spec is None:
        return Refusal("InvalidSpec", pool.invalid or "the spec is not valid")
    target = _target(pool)
    rivals = [p for p in pools if p.key != pool.key and p.spec is not None and _target(p) == target]
    older = [p for p in rivals if _age_key(p) < _age_key(pool)]
    if older:
        owner = min(older, key=_age_key)
        return Refusal(
            "DeploymentClaimed",
            f"Deployment {target[0]}/{target[1]} is already scaled by GPUPool {owner.key[0]}/{owner.key[1]}; "
            "one Deployment takes one pool",
        )
    if target not in deployments:
        return Refusal("DeploymentMissing", f"Deployment {target[0]}/{target[1]} not found")
    return None


def _age_key(pool: LivePool) -> tuple[dt.datetime, str, str]:
    created = pool.created or dt.datetime.max.replace(tzinfo=dt.UTC)
    return (created, pool.key[0], pool.key[1])


def scaling_owner(deployment: DeploymentInfo, hpas: Iterable[HpaInfo]) -> str | None:
    """The HPA that scales this Deployment (Ebbtide then must not), named as kind/namespace/name."""
    for hpa in sorted(hpas, key=lambda h: (h.namespace, h.name)):
        if (hpa.namespace, hpa.target_kind, hpa.target_name) == (deployment.namespace, "Deployment", deployment.name):
            return f"HorizontalPodAutoscaler {hpa.namespace}/{hpa.name}"
    return None


class PoolTable:
    """Live pools by (namespace, name), kept in step with the GPUPool snapshot."""

    def __init__(self, decode_state: StateDecoder) -> None:
        self.pools: dict[Key, LivePool] = {}
        self._decode = decode_state
        self._seen_versions: dict[Key, tuple[str, int | None, bool]] = {}

    def sync(self, raw_pools: Mapping[Key, Mapping[str, Any]], now: dt.datetime) -> list[Key]:
        """Add new pools, re-read changed specs (keeping the state), drop deleted pools; returns the keys
        of pools whose spec or pause changed (the demand poller must hear of them)."""
        changed: list[Key] = []
        for key in list(self.pools):
            if key not in raw_pools:
                del self.pools[key]
                self._seen_versions.pop(key, None)
        for key, obj in raw_pools.items():
            meta = obj.get("metadata") or {}
            generation = meta.get("generation")
            generation = int(generation) if isinstance(generation, int) else None
            uid = str(meta.get("uid", ""))
            paused = is_paused(obj)
            version = (uid, generation, paused)
            live = self.pools.get(key)
            if live is not None and live.uid == uid and self._seen_versions.get(key) == version:
                continue
            self._seen_versions[key] = version
            spec, invalid = spec_problem(obj.get("spec"))
            raw_target = (obj.get("spec") or {}).get("target") or {}
            deployment = spec.target.deployment if spec else str(raw_target.get("deployment", ""))
            deployment_ns = (spec.target.namespace if spec else raw_target.get("namespace")) or key[0]
            ref = PoolRef(key[1], key[0], deployment, str(deployment_ns))
            if live is None or live.uid != uid:
                status = dict(obj.get("status") or {})
                text = status.get("policyState")
                state, note = self._decode(text if isinstance(text, str) else None, now)
                live = LivePool(
                    key=key,
                    uid=uid,
                    ref=ref,
                    created=parse_time(meta.get("creationTimestamp")),
                    generation=generation,
                    spec=spec,
                    invalid=invalid,
                    paused=paused,
                    state=state,
                    state_note=note,
                    persisted_state=state,
                    status=status,
                    last_scale_time=parse_time(status.get("lastScaleTime")),
                )
                self.pools[key] = live
            else:
                live.generation, live.spec, live.invalid, live.paused, live.ref = (
                    generation,
                    spec,
                    invalid,
                    paused,
                    ref,
                )
            changed.append(key)
        return changed

    def refresh_refusals(self, deployments: Mapping[Key, DeploymentInfo]) -> None:
        """Recompute every pool's refusal from the current snapshots."""
        pools = list(self.pools.values())
        for pool in pools:
            pool.refusal = refusal_of(pool, pools, deployments)

    def __iter__(self) -> Any:
        return iter(sorted(self.pools.values(), key=lambda p: p.key))

    def __len__(self) -> int:
        return len(self.pools)
