"""Running the benchmark: the processes (upstream, targets, load generator) and the report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from gateway.bench.load import RunResult, generate, median_result, summarize
from gateway.bench.servers import (
    BODY,
    LOOPBACK,
    MODEL,
    POOL_YAML,
    event_loop_factory,
    passthrough_app,
    serve,
    upstream_app,
)

__all__ = ["main", "run"]

# ---- processes ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready at {url} within {timeout:.0f} s")


@contextmanager
def _process(cmd: list[str], ready_url: str, name: str, timeout: float = 60.0,
             env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[None]:  # fmt: skip
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        _wait_ready(ready_url, proc, timeout, name)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not None and not isinstance(out, int):
            out.close()


def _self(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.bench", *args]


@contextmanager
def _target(name: str, upstream: str, work: Path, litellm_python: str | None) -> Iterator[str]:
    """Start one target in front of ``upstream``; yield the chat completions URL."""
    if name == "direct":
        yield upstream + "/v1/chat/completions"
        return
    port = _free_port()
    base = f"http://{LOOPBACK}:{port}"
    log = work / f"{name}.log"
    if name in ("passthrough", "passthrough-httpx"):
        client = "httpx" if name.endswith("httpx") else "aiohttp"
        cmd = _self("passthrough", "--port", str(port), "--upstream", upstream, "--client", client)
        # The passthrough has no GET route; a POST probes it.
        with _process(cmd, upstream + "/health", name, log=log):
            _wait_post(base + "/v1/chat/completions")
            yield base + "/v1/chat/completions"
    elif name == "ebbtide":
        pool = work / "pool.yaml"
        pool.write_text(POOL_YAML)
        ebbtide = shutil.which("ebbtide", path=str(Path(sys.executable).parent)) or "ebbtide"
        cmd = [ebbtide, "gateway", "--listen", f"{LOOPBACK}:{port}", "--pool", str(pool),
               "--endpoints", f"bench={upstream.removeprefix('http://')}"]  # fmt: skip
        with _process(cmd, base + "/readyz", name, log=log):
            yield base + "/v1/chat/completions"
    elif name == "litellm":
        if litellm_python is None:
            raise RuntimeError("litellm: pass --litellm-python (from e2e/litellm/install.sh)")
        config = work / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            f"    litellm_params: {{model: openai/{MODEL}, api_base: '{upstream}/v1', api_key: unused}}\n"
            "litellm_settings: {telemetry: false}\n"
        )
        # No network beyond loopback: the bundled model cost map, no telemetry, no database.
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR",
               "DISABLE_SCHEMA_UPDATE": "True", "NO_PROXY": "*"}  # fmt: skip
        litellm = str(Path(litellm_python).parent / "litellm")
        cmd = [litellm, "--config", str(config), "--host", LOOPBACK, "--port", str(port), "--num_workers", "1"]
        with _process(cmd, base + "/health/liveliness", name, timeout=180, env=env, log=log):
            yield base + "/v1/chat/completions"
    else:
        raise ValueError(f"unknown target {name!r}")


def _wait_post(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.post(url, json=BODY, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _load(url: str, rate: float, duration: float, warmup: float, stream: bool) -> RunResult:
    cmd = _self("load", "--url", url, "--rate", str(rate), "--duration", str(duration), "--warmup", str(warmup))
    out = subprocess.run([*cmd, *(["--stream"] if stream else [])], capture_output=True, check=True, timeout=300)
    return summarize(rate, json.loads(out.stdout))


# ---- the report --------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "timeout" if value == float("inf") else f"{value:.2f}"


def _report(table: dict[tuple[str, bool, float], RunResult], targets: list[str], rates: list[float], runs: int) -> str:
    lines = [
        f"median of {runs} runs; latency from each request's scheduled send; streaming = time to first byte",
        "| target | mode | offered req/s | sustained req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stream in (False, True):
        for rate in rates:
            direct = table.get(("direct", stream, rate))
            for name in targets:
                r = table[(name, stream, rate)]
                added = ("-", "-") if direct is None or name == "direct" else (
                    _ms(r.p50_ms - direct.p50_ms), _ms(r.p99_ms - direct.p99_ms))  # fmt: skip
                lines.append(
                    f"| {name} | {'stream' if stream else 'plain'} | {rate:.0f} | {r.sustained:.0f} | {_ms(r.p50_ms)} "
                    f"| {_ms(r.p99_ms)} | {added[0]} | {added[1]} | {r.failed} |"
                )
    return "\n".join(lines)


def _settle(url: str, timeout: float = 120.0) -> None:
    """Wait until a target answers twice in a row within 100 ms (idle, each takes a few ms): an
    overloaded one has drained what its last run left behind."""
    deadline = time.monotonic() + timeout
    quick = 0
    while time.monotonic() < deadline and quick < 2:
        started = time.monotonic()
        try:
            ok = httpx.post(url, json=BODY, timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        quick = quick + 1 if ok and time.monotonic() - started < 0.1 else 0
        if quick < 2:
            time.sleep(0.2 if ok else 1.0)


def run(args: argparse.Namespace) -> int:
    """Run every target, mode and rate ``args.runs`` times and print the table.

    All targets stay up for the whole run and the runs are interleaved (run 1 of every
    target, then run 2...), so a burst of other load on the machine falls on all of them.
    """
    # Terminated, still stop the child processes (the context managers' exits run on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    targets: list[str] = args.targets
    rates: list[float] = args.rates
    raw: dict[tuple[str, bool, float], list[RunResult]] = {}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ebbtide-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        up_port = _free_port()
        upstream = f"http://{LOOPBACK}:{up_port}"
        stack.enter_context(_process(_self("upstream", "--port", str(up_port)), upstream + "/health", "upstream"))
        urls = {name: stack.enter_context(_target(name, upstream, work, args.litellm_python)) for name in targets}
        for stream in (False, True):
            for rate in rates:
                for run_index in range(args.runs):
                    for name in targets:
                        # Every target, not only this one: an overloaded proxy keeps burning CPU while it
                        # drains the requests its last run left behind, and this machine has two cores.
                        for other in targets:
                            _settle(urls[other])
                        loads.append(os.getloadavg()[0])
                        result = _load(urls[name], rate, args.duration, args.warmup, stream)
                        raw.setdefault((name, stream, rate), []).append(result)
                        print(f"run {run_index + 1} {name} {'stream' if stream else 'plain'} {rate:.0f}/s: "
                              f"{result.sustained:.0f}/s p50 {_ms(result.p50_ms)} p99 {_ms(result.p99_ms)} "
                              f"failed {result.failed}", file=sys.stderr, flush=True)  # fmt: skip
    table = {key: median_result(results) for key, results in raw.items()}
    print(f"{os.cpu_count()} cores; 1-minute load average before the runs: median {statistics.median(loads):.2f}, "
          f"max {max(loads):.2f}; {args.duration:g} s measured after {args.warmup:g} s warm-up per run")  # fmt: skip
    print(_report(table, targets, rates, args.runs))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``run`` (the default) or one of the child roles."""
    parser = argparse.ArgumentParser(prog="python -m gateway.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    runp = sub.add_parser("run", help="run the benchmark and print the table (default)")
    runp.add_argument("--targets", type=lambda s: s.split(","),
                      default=["direct", "passthrough", "ebbtide", "passthrough-httpx", "litellm"])  # fmt: skip
    runp.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[200.0, 500.0])
    runp.add_argument("--runs", type=int, default=3)
    runp.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    runp.add_argument("--warmup", type=float, default=1.0, help="seconds sent but not measured per run")
    runp.add_argument("--litellm-python", default=os.environ.get("EBBTIDE_LITELLM_PYTHON"))
    up = sub.add_parser("upstream")
    up.add_argument("--port", type=int, required=True)
    pt = sub.add_parser("passthrough")
    pt.add_argument("--port", type=int, required=True)
    pt.add_argument("--upstream", required=True)
    pt.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp")
    ld = sub.add_parser("load")
    ld.add_argument("--url", required=True)
    ld.add_argument("--rate", type=float, required=True)
    ld.add_argument("--duration", type=float, required=True)
    ld.add_argument("--warmup", type=float, default=1.0)
    ld.add_argument("--stream", action="store_true")
    given = list(sys.argv[1:] if argv is None else argv)
    if not given or given[0] not in sub.choices:
        given = ["run", *given]
    args = parser.parse_args(given)
    if args.role == "upstream":
        return serve(upstream_app(), args.port)
    if args.role == "passthrough":
        return serve(passthrough_app(args.upstream, args.client), args.port)
    if args.role == "load":
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            print(json.dumps(runner.run(generate(args.url, args.rate, args.duration, args.warmup, args.stream))))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
