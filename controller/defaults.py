"""Defaults shared by the daemon's and the gateway's flags and the Helm chart's values (a test keeps the
chart equal to these)."""

from __future__ import annotations

__all__ = [
    "CONTROLLER_METRICS_ADDR",
    "GATEWAY_LISTEN",
    "LEASE_NAME",
    "LOG_FORMAT",
    "TICK_SECONDS",
]

TICK_SECONDS = 5.0
"""The controller's reconcile period; it also wakes exactly at schedule boundaries."""
CONTROLLER_METRICS_ADDR = "0.0.0.0:8081"
"""Where the controller serves /metrics, /healthz and /readyz."""
GATEWAY_LISTEN = "0.0.0.0:8080"
"""Where the gateway serves the OpenAI API, /metrics, /healthz and /readyz."""
LOG_FORMAT = "json"
"""json (one object per line) or text."""
LEASE_NAME = "ebbtide-controller"
"""The coordination.k8s.io/v1 Lease the controller replicas elect a leader on."""
