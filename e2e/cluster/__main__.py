"""Run the e2e control plane by hand: ``python -m e2e.cluster [--gpu-node NAME=GPUS ...]``.

Starts the same cluster as the tests' ``k8s_cluster`` fixture, optionally with
fake GPU nodes, prints the kubeconfig path and runs until interrupted (Ctrl-C),
then stops everything.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from kubernetes import config

from e2e.cluster.binaries import BinariesMissingError
from e2e.cluster.local import ClusterStartError, LocalCluster
from e2e.cluster.nodes import create_gpu_node


def main(argv: list[str] | None = None) -> int:
    """Start the cluster, print how to reach it, and wait for SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpu-node",
        action="append",
        default=[],
        metavar="NAME=GPUS",
        help="create a fake GPU node (repeatable), e.g. --gpu-node gpu-a=2",
    )
    args = parser.parse_args(argv)
    nodes = []
    for spec in args.gpu_node:
        name, _, gpus = spec.partition("=")
        if not name or not gpus.isdigit():
            parser.error(f"--gpu-node wants NAME=GPUS, got {spec!r}")
        nodes.append((name, int(gpus)))

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        with LocalCluster() as cluster:
            api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
            for name, gpus in nodes:
                create_gpu_node(api, name, gpus)
            print(f"export KUBECONFIG={cluster.kubeconfig}")
            print(f"# API server {cluster.api_server_url}; pod IPs from {cluster.pod_cidr}")
            print(f"# logs in {cluster.log_dir}; Ctrl-C stops", flush=True)
            while True:
                cluster.check_alive()
                time.sleep(1)
    except KeyboardInterrupt:
        return 0
    except (BinariesMissingError, ClusterStartError) as e:
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
