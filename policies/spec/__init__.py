"""The GPUPool spec: the one typed source of the CRD schema, the chart's defaults and the validator.

Every field has a default where a safe one exists and a description that the CRD and the docs reuse.
Field names are snake_case in Python and camelCase on the wire (YAML, the Kubernetes object).
"""

from __future__ import annotations

from policies.spec.base import API_GROUP, API_VERSION, KIND, PLURAL, Weekday, parse_clock
from policies.spec.fallback import Fallback, Provider, SecretRef
from policies.spec.metrics import Metrics, MetricsSourceKind, PrometheusQueries, PrometheusSource
from policies.spec.pool import GPUPool, GPUPoolSpec, ObjectMeta
from policies.spec.schedule import HolidayCalendar, Holidays, Override, OverrideMode, Schedule, Window
from policies.spec.serving import (
    Billing,
    BillingGranularity,
    Budget,
    Demand,
    FallbackCapAction,
    GPUCapAction,
    Objective,
    Target,
)
from policies.spec.status import (
    BilledPod,
    Condition,
    FallbackLedger,
    FallbackTotal,
    GPUPoolStatus,
    LastDecision,
    NextChange,
    PoolLedger,
)

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "PLURAL",
    "BilledPod",
    "Billing",
    "BillingGranularity",
    "Budget",
    "Condition",
    "Demand",
    "Fallback",
    "FallbackCapAction",
    "FallbackLedger",
    "FallbackTotal",
    "GPUCapAction",
    "GPUPool",
    "GPUPoolSpec",
    "GPUPoolStatus",
    "HolidayCalendar",
    "Holidays",
    "LastDecision",
    "Metrics",
    "MetricsSourceKind",
    "NextChange",
    "ObjectMeta",
    "Objective",
    "Override",
    "OverrideMode",
    "PoolLedger",
    "PrometheusQueries",
    "PrometheusSource",
    "Provider",
    "Schedule",
    "SecretRef",
    "Target",
    "Weekday",
    "Window",
    "parse_clock",
]
