"""The daemon's settings (what the flags set) and the metrics it exports on /metrics."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["LEADER", "POOLS", "SCALES", "TICKS", "TICK_SECONDS", "Settings"]

TICKS = Counter("ebbtide_controller_ticks_total", "Passes over every pool")
TICK_SECONDS = Histogram(
    "ebbtide_controller_tick_seconds", "Time one pass over every pool took", buckets=(0.01, 0.05, 0.1, 0.5, 1, 5)
)
POOLS = Gauge("ebbtide_controller_pools", "Live GPUPools")
SCALES = Counter("ebbtide_controller_scale_patches_total", "Scale patches applied")
LEADER = Gauge("ebbtide_controller_leader", "1 while this replica leads (or election is off)")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the flags set (see `ebbtide controller --help`)."""

    kubeconfig: str | None
    namespace: str | None
    dry_run: bool
    once: bool
    tick_seconds: float
    log_format: str
    log_level: str
    metrics_addr: tuple[str, int] | None
    leader_elect: bool
    lease_name: str
    lease_namespace: str
    identity: str
    gateway_namespace: str | None
    gateway_selector: str
    gateway_port: int
    gateway_urls: tuple[str, ...]
