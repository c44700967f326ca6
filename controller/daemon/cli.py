"""`ebbtide controller`: the flags, checked and turned into the daemon's Settings."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from controller import defaults
from controller.daemon.health import parse_listen_address
from controller.daemon.settings import Settings

__all__ = ["register", "settings_from_args"]

_IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def _default_lease_namespace() -> str:
    try:
        with open(_IN_CLUSTER_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip() or "default"
    except OSError:
        return "default"


def register(subparsers: Any) -> None:
    """Add the `controller` subcommand."""
    parser = subparsers.add_parser(
        "controller",
        help="run the daemon: watch GPUPools and scale their vLLM Deployments",
        description=(
            "Watch GPUPool objects and scale their vLLM Deployments by schedule, queue depth and cost. "
            "Every decision is logged (one JSON line per change), recorded as an Event on the GPUPool and "
            "written to its status. Try --dry-run --once first: it decides and reports but never scales."
        ),
    )
    parser.add_argument(
        "--kubeconfig",
        metavar="PATH",
        default=None,
        help="kubeconfig to use; without it the in-cluster service-account config",
    )
    parser.add_argument(
        "--namespace",
        metavar="NS",
        default=None,
        help="watch GPUPools, Deployments, pods and HPAs in NS only (a pool's Deployment must then be in NS "
        "too); default all namespaces",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="decide, log and write the status and Events, but never patch a Deployment or a pod",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="one pass over every pool, then exit: 0 when every pool was read, 1 when any could not be",
    )
    parser.add_argument(
        "--tick",
        metavar="SECONDS",
        type=_positive,
        default=defaults.TICK_SECONDS,
        help="reconcile period (default %(default)s); the daemon also wakes at every schedule boundary "
        "(pre-warm, window opening and closing, override start and end)",
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=defaults.LOG_FORMAT,
        help="json (default): one object per line; text: for people",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning"),
        default="info",
        help="info (default) logs each changed decision; debug logs every pool's decision on every tick",
    )
    parser.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        default=defaults.CONTROLLER_METRICS_ADDR,
        help="serve /metrics, /healthz and /readyz here (default %(default)s; port 0 picks a free one; empty disables)",
    )
    elect = parser.add_mutually_exclusive_group()
    elect.add_argument(
        "--leader-elect",
        dest="leader_elect",
        action="store_true",
        default=True,
        help="take part in leader election on a Lease (the default); only the leader scales and writes status",
    )
    elect.add_argument(
        "--no-leader-elect",
        dest="leader_elect",
        action="store_false",
        help="act without a Lease (a single replica, or --once)",
    )
    parser.add_argument(
        "--lease-name", default=defaults.LEASE_NAME, help="name of the coordination.k8s.io Lease (default %(default)s)"
    )
    parser.add_argument(
        "--lease-namespace",
        metavar="NS",
        default=None,
        help="namespace of the Lease (default: the pod's own namespace in a cluster, else default)",
    )
    parser.add_argument(
        "--identity", default=None, help="this replica's name in the Lease (default: hostname and process id)"
    )
    parser.add_argument(
        "--gateway-namespace", metavar="NS", default=None, help="namespace of the gateway's pods (default: all)"
    )
    parser.add_argument(
        "--gateway-selector",
        metavar="LABELS",
        default="",
        help="label selector of the gateway's pods, e.g. app.kubernetes.io/name=ebbtide-gateway "
        "(empty: no gateway in the cluster; its counters are then absent, not zero)",
    )
    parser.add_argument(
        "--gateway-port",
        type=int,
        default=8080,
        help="port of the gateway pods' /metrics: their listen port (default %(default)s)",
    )
    parser.add_argument(
        "--gateway-url",
        metavar="URL",
        action="append",
        default=[],
        help="a gateway's base URL outside the cluster (repeatable); its /metrics is read as well",
    )
    parser.set_defaults(func=_run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Check the flags and build the daemon's Settings (ValueError naming the flag on bad input)."""
    try:
        metrics_addr = parse_listen_address(args.metrics_addr) if args.metrics_addr else None
    except ValueError as exc:
        raise ValueError(f"--metrics-addr: {exc}") from None
    if not 1 <= args.gateway_port <= 65535:
        raise ValueError(f"--gateway-port {args.gateway_port}: must be 1..65535")
    for url in args.gateway_url:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--gateway-url {url!r}: must start with http:// or https://")
    return Settings(
        kubeconfig=args.kubeconfig,
        namespace=args.namespace,
        dry_run=args.dry_run,
        once=args.once,
        tick_seconds=args.tick,
        log_format=args.log_format,
        log_level=args.log_level,
        metrics_addr=metrics_addr,
        leader_elect=args.leader_elect,
        lease_name=args.lease_name,
        lease_namespace=args.lease_namespace or _default_lease_namespace(),
        identity=args.identity or f"{socket.gethostname()}-{os.getpid()}",
        gateway_namespace=args.gateway_namespace,
        gateway_selector=args.gateway_selector,
        gateway_port=args.gateway_port,
        gateway_urls=tuple(args.gateway_url),
    )


def _run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"ebbtide controller: {exc}", file=sys.stderr)
        return 2
    from controller.daemon.app import main  # the daemon's imports only when it runs, not for --help

    return main(settings)
