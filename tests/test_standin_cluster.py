"""One stand-in process, several replicas: add and remove them at run time, in process,
over the control API, and from the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from controller.scrape import EngineSample, NoData, scrape_vllm
from e2e.standin import BackgroundCluster, StandinConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG = StandinConfig(tokens_per_second=5_000, output_tokens=3)


def _complete(http: httpx.Client, base: str) -> int:
    body = {"model": CONFIG.model_name, "prompt": "hi", "max_tokens": 2}
    return http.post(base + "/v1/completions", json=body).status_code


def test_replicas_come_and_go_each_with_its_own_metrics() -> None:
    with BackgroundCluster(CONFIG, replicas=2) as cluster, httpx.Client(timeout=5) as http:
        first, second = cluster.ports
        assert first != second
        assert _complete(http, cluster.url(first)) == 200
        third = cluster.add_replica()
        assert cluster.ports == [first, second, third]
        samples = {p: scrape_vllm(cluster.url(p) + "/metrics", client=http) for p in cluster.ports}
        assert all(isinstance(s, EngineSample) for s in samples.values())
        successes = {p: s.request_success_total for p, s in samples.items() if isinstance(s, EngineSample)}
        assert successes == {first: 1.0, second: 0.0, third: 0.0}

        cluster.remove_replica(second)
        assert cluster.ports == [first, third]
        gone = scrape_vllm(cluster.url(second) + "/metrics", client=http, timeout=2)
        assert isinstance(gone, NoData)
        assert _complete(http, cluster.url(third)) == 200


def test_removing_a_replica_drops_requests_that_outlive_the_grace_period() -> None:
    with BackgroundCluster(CONFIG, replicas=1) as cluster, httpx.Client(timeout=5) as http:
        port = cluster.ports[0]
        cluster.pause()
        body = {"model": CONFIG.model_name, "prompt": "x", "max_tokens": 3, "stream": True}
        with http.stream("POST", cluster.url(port) + "/v1/completions", json=body) as response:
            assert response.status_code == 200
            cluster.remove_replica(port)
            # Decoding is paused, so the request outlives the grace period and is cut off.
            try:
                lines = list(response.iter_lines())
            except httpx.HTTPError:
                lines = []
        assert "data: [DONE]" not in lines
        assert cluster.ports == []
        assert isinstance(scrape_vllm(cluster.url(port) + "/metrics", client=http, timeout=2), NoData)


def test_control_api_adds_lists_pauses_and_removes() -> None:
    with BackgroundCluster(CONFIG, replicas=1, control=True) as cluster, httpx.Client(timeout=5) as http:
        control = f"http://127.0.0.1:{cluster.control_port}"
        added = http.post(control + "/replicas")
        assert added.status_code == 201
        port = added.json()["port"]
        listed = http.get(control + "/replicas").json()
        assert listed == {"ports": [cluster.ports[0], port], "paused": False}
        assert http.post(control + "/pause").json() == {"paused": True}
        assert http.get(control + "/replicas").json()["paused"] is True
        assert http.post(control + "/resume").json() == {"paused": False}
        assert _complete(http, f"http://127.0.0.1:{port}") == 200
        assert http.delete(f"{control}/replicas/{port}").status_code == 200
        assert http.delete(f"{control}/replicas/{port}").status_code == 404
        assert port not in http.get(control + "/replicas").json()["ports"]


def test_command_line_serves_replicas_until_sigterm() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "e2e.standin.vllm_server", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "--max-num-seqs" in help_text and "--control-port" in help_text

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--port", "0", "--replicas", "2", "--control-port", "0", "--max-num-seqs", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2e.standin.vllm_server", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert len(ready["ports"]) == 2 and ready["control_port"]
        with httpx.Client(timeout=5) as http:
            for port in ready["ports"]:
                sample = scrape_vllm(f"http://127.0.0.1:{port}/metrics", client=http)
                assert isinstance(sample, EngineSample) and sample.in_flight == 0
            added = http.post(f"http://127.0.0.1:{ready['control_port']}/replicas").json()["port"]
            assert _complete(http, f"http://127.0.0.1:{added}") == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)
