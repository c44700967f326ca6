"""A stand-in for a vLLM server on loopback: vLLM's OpenAI-compatible API, its ``/metrics``
names and labels, and a service model (``max_num_seqs`` running, the rest waiting).

For tests and demos only; it is not part of the shipped controller.
"""

from e2e.standin.cluster import LOOPBACK, BackgroundCluster, Replica, StandinCluster
from e2e.standin.config import StandinConfig
from e2e.standin.engine import Engine, QueueFull, count_tokens
from e2e.standin.follow import FollowedReplica, PodFollower, ReplicaEvent
from e2e.standin.instrument import MetricsFault, RequestRecord
from e2e.standin.metrics import EngineMetrics
from e2e.standin.pods import LOOPBACK_NETWORK, PodIPError, PodView, deployment_selector, is_serving, loopback_ip

__all__ = [
    "LOOPBACK",
    "LOOPBACK_NETWORK",
    "BackgroundCluster",
    "Engine",
    "EngineMetrics",
    "FollowedReplica",
    "MetricsFault",
    "PodFollower",
    "PodIPError",
    "PodView",
    "QueueFull",
    "Replica",
    "ReplicaEvent",
    "RequestRecord",
    "StandinCluster",
    "StandinConfig",
    "count_tokens",
    "deployment_selector",
    "is_serving",
    "loopback_ip",
]
