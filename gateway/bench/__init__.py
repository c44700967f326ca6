"""The gateway's benchmark: what a proxy adds to a fast upstream, measured on this machine.

``python -m gateway.bench`` starts, each in its own process, a fast OpenAI-compatible
upstream (fixed answers, a vLLM-style ``/metrics`` with an empty queue), then one target
at a time in front of it: (a) none (the upstream called directly), (b) a bare aiohttp
passthrough (the floor), (b') the same with an httpx client (the HTTP-stack comparison),
(c) ``ebbtide gateway``, (d) LiteLLM's proxy (its own virtualenv, ``e2e/litellm/install.sh``;
one worker, no database). An open-loop load generator in a further process sends chat
completions at a fixed arrival rate, so a slow proxy shows as latency and failures rather
than as a lower offered rate; latency runs from each request's scheduled send time. For
each target, mode (plain, streaming) and rate it prints the median over ``--runs`` runs of
the sustained rate, p50/p99 latency (time to first byte when streaming) and the added
latency against the direct row. It prints measured numbers; it is not a timed test.
"""

from gateway.bench.load import RunResult, percentile, summarize
from gateway.bench.runner import main

__all__ = ["RunResult", "main", "percentile", "summarize"]
