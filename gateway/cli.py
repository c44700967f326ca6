"""`ebbtide gateway`: the OpenAI-compatible front door, with pools from GPUPool files or the cluster.

Static mode: `--pool FILE` (repeatable) with `--endpoints POOL=HOST:PORT,...` for each pool's replicas;
provider keys from each provider's `apiKeyEnv` or `apiKeyFile`. Cluster mode (`--kubeconfig PATH`, or
`--in-cluster`): gateway.cluster reads the GPUPools, follows their Deployments' Ready pods and reads
provider keys from Secrets; it exposes `follow(directory, *, kubeconfig, namespace)`, a coroutine that
keeps the directory current (and calls `directory.mark_synced()` once the first listing is in).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from controller.defaults import GATEWAY_LISTEN, LOG_FORMAT
from gateway.app import Gateway
from gateway.auth import ClientAuth
from gateway.config import (
    ConfigError,
    GatewaySettings,
    load_client_keys,
    load_static_pools,
    parse_endpoints,
    parse_listen,
    provider_keys,
)
from gateway.directory import PoolDirectory
from gateway.logs import configure_logging
from gateway.server import start_site

__all__ = ["register", "run"]

_LOG = logging.getLogger("ebbtide.gateway")


def register(subparsers: Any) -> None:
    """Add the `gateway` subcommand."""
    defaults = GatewaySettings()
    p = subparsers.add_parser("gateway", help="serve the OpenAI API in front of the pools (GPU first, paid API spill)")
    p.add_argument(
        "--listen", default=GATEWAY_LISTEN, metavar="HOST:PORT", help="address to serve on (default %(default)s)"
    )
    p.add_argument("--pool", action="append", default=[], metavar="FILE", help="GPUPool YAML (repeatable; static mode)")
    p.add_argument(
        "--endpoints",
        action="append",
        default=[],
        metavar="POOL=HOST:PORT,...",
        help="replica addresses of a pool, by name or namespace/name (static mode; repeatable)",
    )
    p.add_argument("--kubeconfig", metavar="PATH", help="read pools and pods from this cluster (cluster mode)")
    p.add_argument("--in-cluster", action="store_true", help="cluster mode with the pod's service account")
    p.add_argument("--namespace", help="cluster mode: only GPUPools of this namespace (default: all)")
    p.add_argument("--api-keys-file", metavar="FILE", help="accepted client keys, one per line (default: no auth)")
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes, help="larger bodies get 413")
    p.add_argument("--max-held", type=int, default=defaults.max_held, help="held requests per pool at zero replicas")
    p.add_argument(
        "--max-hold-seconds",
        type=float,
        default=defaults.max_hold_seconds,
        help="longest hold when no fallback can take a request",
    )
    p.add_argument(
        "--scrape-interval",
        type=float,
        default=defaults.scrape_interval_seconds,
        help="seconds between reads of each replica's /metrics",
    )
    p.add_argument(
        "--hold-keepalive",
        type=float,
        default=defaults.keepalive_seconds,
        metavar="SECONDS",
        help="a held streaming request gets an SSE comment this often (0: never; default %(default)s)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=defaults.shutdown_grace_seconds,
        help="seconds requests under way get to finish on SIGTERM",
    )
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=defaults.access_log,
        help="one log line per generation request: pool, route, provider, status, seconds (default: off)",
    )
    p.add_argument("--no-priority-check", action="store_true", help="skip the one-token check that vLLM takes priority")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--log-format", default=LOG_FORMAT, choices=("json", "text"), help="default %(default)s")
    p.set_defaults(func=_main)


def _settings(args: argparse.Namespace) -> GatewaySettings:
    host, port = parse_listen(args.listen)
    if args.max_body_bytes < 1024:
        raise ConfigError("--max-body-bytes must be at least 1024")
    if args.max_held < 0 or args.max_hold_seconds < 0 or args.scrape_interval <= 0 or args.shutdown_grace < 0:
        raise ConfigError("--max-held, --max-hold-seconds and --shutdown-grace must be >= 0, --scrape-interval > 0")
    return GatewaySettings(
        host=host, port=port, max_body_bytes=args.max_body_bytes, max_held=args.max_held,
        max_hold_seconds=args.max_hold_seconds, scrape_interval_seconds=args.scrape_interval,
        check_priority=not args.no_priority_check, shutdown_grace_seconds=args.shutdown_grace,
        keepalive_seconds=max(args.hold_keepalive, 0.0), access_log=args.access_log,
    )  # fmt: skip


def fill_static(directory: PoolDirectory, pool_files: list[str], endpoint_args: list[str]) -> None:
    """Load the pool files and their `--endpoints` into the directory; ConfigError on any problem."""
    pools = load_static_pools([Path(f) for f in pool_files])
    addresses = parse_endpoints(endpoint_args)
    by_name: dict[str, Any] = {}
    for pool in pools:
        by_name[f"{pool.metadata.namespace}/{pool.metadata.name}"] = pool
        by_name.setdefault(pool.metadata.name, pool)
    unknown = sorted(set(addresses) - set(by_name))
    if unknown:
        raise ConfigError(
            f"--endpoints names unknown pools: {', '.join(unknown)} (known: {', '.join(sorted(by_name))})"
        )
    for pool in pools:
        mine = addresses.get(f"{pool.metadata.namespace}/{pool.metadata.name}", []) + addresses.get(
            pool.metadata.name, []
        )
        if not pool.spec.models and not pool.spec.target.served_model:
            raise ConfigError(f"pool {pool.metadata.name}: list the model names clients send in spec.models")
        endpoints = [(f"{pool.metadata.name}-{i}", a) for i, a in enumerate(mine)]
        problems = directory.set_pool(pool, endpoints, provider_keys=provider_keys(pool), probe_readiness=True)
        if problems:
            raise ConfigError("; ".join(problems))
    directory.mark_synced()


async def run(gateway: Gateway, *, cluster: dict[str, Any] | None = None) -> None:
    """Serve until SIGINT or SIGTERM (and, in cluster mode, follow the cluster meanwhile)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    follower: asyncio.Task[Any] | None = None
    if cluster is not None:
        module = importlib.import_module("gateway.cluster")
        follower = asyncio.create_task(module.follow(gateway.directory, **cluster))
    runner, port = await start_site(gateway, gateway.settings.host, gateway.settings.port)
    _LOG.info("gateway serving on %s:%d (%d pools)", gateway.settings.host, port, len(gateway.directory.pools))
    waiter = asyncio.create_task(stop.wait())
    watched: set[asyncio.Task[Any]] = {waiter} | ({follower} if follower else set())
    done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    if follower is not None and follower in done and follower.exception() is not None:
        _LOG.error("cluster mode stopped: %s", follower.exception())
    for task in watched:
        task.cancel()
    gateway.draining = True
    _LOG.info("shutting down: requests under way get %.0f s", gateway.settings.shutdown_grace_seconds)
    await runner.cleanup()


def _main(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        settings = _settings(args)
        auth = ClientAuth(load_client_keys(Path(args.api_keys_file))) if args.api_keys_file else None
        directory = PoolDirectory()
        cluster_mode = bool(args.kubeconfig or args.in_cluster)
        if cluster_mode and (args.pool or args.endpoints):
            raise ConfigError("give either --kubeconfig/--in-cluster or --pool/--endpoints, not both")
        if not cluster_mode:
            if not args.pool:
                raise ConfigError("give --pool FILE (with --endpoints) or --kubeconfig PATH / --in-cluster")
            fill_static(directory, args.pool, args.endpoints)
    except ConfigError as err:
        print(f"ebbtide gateway: {err}", file=sys.stderr)
        return 2
    cluster = {"kubeconfig": args.kubeconfig, "namespace": args.namespace} if cluster_mode else None
    if os.name != "nt":
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # optional: the asyncio loop works, a little slower
            pass
    asyncio.run(run(Gateway(directory, settings, auth), cluster=cluster))
    return 0
