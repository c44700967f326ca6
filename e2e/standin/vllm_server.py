"""Run stand-in vLLM replicas from the command line.

    python -m e2e.standin.vllm_server --port 8000 --replicas 2 --control-port 8099

Replica ports are consecutive from ``--port`` (0 picks free ones). The control port, when
given, serves ``GET/POST /replicas``, ``DELETE /replicas/{port}``, ``POST /pause`` and
``POST /resume``. The chosen ports are printed as one JSON line on standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from e2e.standin.cluster import LOOPBACK, StandinCluster
from e2e.standin.config import StandinConfig

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the service model's knobs as options."""
    defaults = StandinConfig()
    parser = argparse.ArgumentParser(
        prog="python -m e2e.standin.vllm_server",
        description="A stand-in for vLLM's OpenAI-compatible server and /metrics, for tests and demos.",
    )
    parser.add_argument("--host", default=LOOPBACK, help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="first replica's port; 0 for free ports")
    parser.add_argument("--replicas", type=int, default=1, help="replicas to start with")
    parser.add_argument("--control-port", type=int, default=None, help="serve the control API here")
    parser.add_argument("--served-model-name", default=defaults.model_name)
    parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
    parser.add_argument("--max-num-queued-reqs", type=int, default=defaults.max_num_queued_reqs)
    parser.add_argument("--tokens-per-second", type=float, default=defaults.tokens_per_second)
    parser.add_argument("--output-tokens", type=int, default=defaults.output_tokens)
    parser.add_argument("--max-model-len", type=int, default=defaults.max_model_len)
    parser.add_argument("--kv-cache-tokens", type=int, default=defaults.kv_cache_tokens)
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    config = StandinConfig(
        model_name=args.served_model_name,
        max_num_seqs=args.max_num_seqs,
        tokens_per_second=args.tokens_per_second,
        output_tokens=args.output_tokens,
        max_num_queued_reqs=args.max_num_queued_reqs,
        max_model_len=args.max_model_len,
        kv_cache_tokens=args.kv_cache_tokens,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with StandinCluster(config, host=args.host) as cluster:
        for i in range(args.replicas):
            await cluster.add_replica(args.port + i if args.port else 0)
        if args.control_port is not None:
            await cluster.start_control(args.control_port)
        print(json.dumps({"ports": cluster.ports, "control_port": cluster.control_port}), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM."""
    asyncio.run(_serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
