"""`ebbtide simulate`: replay traces through the controller's own loop against simulated ports.

Traces in (`traces`), workloads built from them (`workload`), the serving model (`engine`), the
simulated ports (`world`), the runs (`runner`), their report (`report`, `plot`) and the command (`cli`).
"""

from controller.sim.engine import FallbackModel, PoolEngine, ReplicaModel
from controller.sim.runner import POLICY_NAMES, PolicyRun, RunSettings, lower_bound_run, run_policy
from controller.sim.traces import Trace, TraceError, TraceFormat, read_trace
from controller.sim.workload import Profile, Workload, build_week, load_profile, replay

__all__ = [
    "POLICY_NAMES",
    "FallbackModel",
    "PolicyRun",
    "PoolEngine",
    "Profile",
    "ReplicaModel",
    "RunSettings",
    "Trace",
    "TraceError",
    "TraceFormat",
    "Workload",
    "build_week",
    "load_profile",
    "lower_bound_run",
    "read_trace",
    "replay",
    "run_policy",
]
