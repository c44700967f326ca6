"""`ebbtide controller`: the daemon that watches GPUPools and scales their vLLM Deployments.

`app` wires everything (caches, demand poller, leader election, Events, status, health) around the same
`ControlLoop` the simulator drives; `cli` registers the subcommand. The other modules each hold one
part: `snapshots` (list+watch caches), `pooltable` (live pools and refusals), `cluster` (the Cluster
port), `wakeups` (schedule boundaries), and the pure recorder, status, codec and ledger modules.
"""

__all__: list[str] = []
