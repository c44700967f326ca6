"""Pieces of the whole-system e2e test: local processes run with the chart's own arguments, a real
Prometheus scraping them, a watcher that records each pod's billed interval, and the Table view that
`kubectl get gpupools` prints."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes.client import ApiClient

from controller.kube.pods import parse_time

__all__ = [
    "BilledPod",
    "LocalProcess",
    "PodWatcher",
    "chart_args",
    "free_port",
    "parse_line",
    "prometheus",
    "prometheus_query",
]

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released: good enough for a test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def chart_args(deployment: dict[str, Any], replace: dict[str, str | None], extra: Sequence[str] = ()) -> list[str]:
    """The container args of a rendered Deployment, with `--flag=value` options swapped for local ones.

    ``replace`` maps a flag to its new ``--flag=value`` (or None to drop it); ``$(POD_NAME)`` becomes a
    fixed identity, as Kubernetes would expand it from the downward API.
    """
    args = []
    for arg in deployment["spec"]["template"]["spec"]["containers"][0]["args"]:
        flag = arg.split("=", 1)[0]
        if flag in replace:
            if replace[flag] is not None:
                args.append(str(replace[flag]))
            continue
        args.append(arg.replace("$(POD_NAME)", "e2e-local-0"))
    return [*args, *extra]


def parse_line(line: str) -> dict[str, Any]:
    """One output line of an `ebbtide` process: its JSON object, or {"raw": the text}."""
    try:
        value = json.loads(line)
    except ValueError:
        return {"raw": line.rstrip()}
    return value if isinstance(value, dict) else {"raw": line.rstrip()}


class LocalProcess:
    """`ebbtide ARGS...` as a subprocess; its output lines (JSON parsed when they are JSON) as they come."""

    def __init__(self, args: Sequence[str], name: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        self.name = name
        self.lines: list[dict[str, Any]] = []
        # faulthandler on SIGUSR1: `dump_stacks` shows where a stuck process is.
        entry = (
            "import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
            "from controller.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-c", entry, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                self.lines.append(parse_line(line))

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self._proc.poll() is None

    def dump_stacks(self) -> None:
        """Ask the process to print every thread's stack (into its output lines)."""
        if self.alive():
            self._proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)

    def tail(self, count: int = 40) -> str:
        """The last lines, for assertion messages."""
        return f"--- {self.name} ---\n" + "\n".join(json.dumps(line) for line in self.lines[-count:])

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait; the exit code."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait(10)
        self._reader.join(5)
        return code


def wait_http(url: str, timeout: float, process: LocalProcess | None = None) -> None:
    """Wait until GET ``url`` answers 200 (failing with the process's output if it died)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise AssertionError(f"{process.name} exited\n{process.tail()}")
        try:
            response = httpx.get(url, timeout=1)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout} s (last: {last})\n{process.tail() if process else ''}")


@contextmanager
def prometheus(
    binary: str,
    work: Path,
    targets: dict[str, str] | None = None,
    *,
    scrape_configs: list[dict[str, Any]] | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[str]:
    """A Prometheus server on loopback scraping every second, with its own storage in ``work``; yields its URL.

    ``targets`` (job -> host:port) is the short form; ``scrape_configs`` are Prometheus's own entries.
    """
    port = free_port()
    jobs = [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in (targets or {}).items()]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": jobs + list(scrape_configs or ()),
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    log = (work / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            *extra_args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (work / "prometheus.log").read_text(errors="replace").splitlines()[-20:]
                raise AssertionError("Prometheus did not become ready:\n" + "\n".join(tail))
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def prometheus_query(url: str, expr: str, at: float) -> list[dict[str, Any]]:
    """An instant query at Unix time ``at``; the result vector (AssertionError on a query error)."""
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=10)
    body = response.json()
    if response.status_code != 200 or body.get("status") != "success":
        raise AssertionError(f"query failed: {expr}\n{response.status_code} {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@dataclass
class BilledPod:
    """One pod's GPU time as the API shows it: bound to its node at ``since``, gone at ``until``."""

    name: str
    since: dt.datetime
    until: dt.datetime | None = None


class PodWatcher:
    """Polls a namespace's pods of one label selector and records when each was bound and when it went."""

    def __init__(self, api: ApiClient, namespace: str, selector: str, interval: float = 0.05) -> None:
        from controller.kube.client import request_json

        self._request = request_json
        self._api = api
        self._path = f"/api/v1/namespaces/{namespace}/pods"
        self._selector = selector
        self._interval = interval
        self.pods: dict[str, BilledPod] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                items = self._request(self._api, "GET", self._path, query={"labelSelector": self._selector})["items"]
            except Exception:  # a slow API server answer: try again
                time.sleep(self._interval)
                continue
            now = dt.datetime.now(dt.UTC)
            seen = set()
            for pod in items:
                uid = pod["metadata"]["uid"]
                seen.add(uid)
                conditions = (pod.get("status") or {}).get("conditions") or []
                bound = next((c for c in conditions if c["type"] == "PodScheduled" and c["status"] == "True"), None)
                since = parse_time(bound["lastTransitionTime"]) if bound else None
                if since is not None and uid not in self.pods:
                    self.pods[uid] = BilledPod(pod["metadata"]["name"], since)
            for uid, billed in self.pods.items():
                if uid not in seen and billed.until is None:
                    billed.until = now
            time.sleep(self._interval)

    def gpu_seconds_of_gone_pods(self) -> float:
        """Billed seconds of the pods that went (bound to gone)."""
        return sum((p.until - p.since).total_seconds() for p in self.pods.values() if p.until is not None)

    def live(self) -> list[BilledPod]:
        """Pods bound and not gone."""
        return [p for p in self.pods.values() if p.until is None]

    def close(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join(5)
