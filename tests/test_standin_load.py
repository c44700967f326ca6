"""The stand-in under load: a burst with max_num_seqs=4 shows 4 running and N-4 waiting,
the queue limit answers 503, and a client that goes away frees its slot.

Decoding is paused while a burst builds so the test observes the queue without racing a
timer; the only waits are bounded polls for requests already sent to arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.scrape import EngineSample, MetricsReading, NoData, scrape_vllm
from e2e.standin import BackgroundCluster, StandinConfig

MODEL = "standin-model"
POLL_DEADLINE_SECONDS = 10.0


def _poll(read: Callable[[], MetricsReading], until: Callable[[EngineSample], bool]) -> EngineSample:
    """Scrape until the condition holds; bounded by a deadline, not by a schedule."""
    deadline = time.monotonic() + POLL_DEADLINE_SECONDS
    last: MetricsReading = NoData("not scraped yet")
    while time.monotonic() < deadline:
        last = read()
        if isinstance(last, EngineSample) and until(last):
            return last
        time.sleep(0.005)
    pytest.fail(f"condition not reached in {POLL_DEADLINE_SECONDS}s; last reading {last}")


def _gauge(text: str, name: str) -> float:
    """A gauge's value read straight from the exposition, independently of the reader."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exposed")


@pytest.mark.parametrize("burst", [5, 12, 40])
def test_burst_runs_max_num_seqs_and_queues_the_rest(burst: int) -> None:
    config = StandinConfig(max_num_seqs=4, tokens_per_second=5_000, output_tokens=8)
    with BackgroundCluster(config) as cluster, httpx.Client() as http:
        url = cluster.url(cluster.ports[0])
        oc = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)

        def complete(i: int) -> str:
            out = oc.completions.create(model=MODEL, prompt=f"request {i}", max_tokens=8)
            return out.choices[0].text

        def read() -> MetricsReading:
            return scrape_vllm(url + "/metrics", client=http, model_name=MODEL)

        cluster.pause()
        with ThreadPoolExecutor(max_workers=burst) as pool:
            futures = [pool.submit(complete, i) for i in range(burst)]
            held = _poll(read, lambda s: s.in_flight == burst)
            raw = http.get(url + "/metrics").text
            cluster.resume()
            texts = [f.result(timeout=30) for f in futures]

        assert (held.running, held.waiting) == (4, burst - 4)
        assert _gauge(raw, "vllm:num_requests_running") == 4
        assert _gauge(raw, "vllm:num_requests_waiting") == burst - 4
        assert held.kv_cache_usage is not None and held.kv_cache_usage > 0
        assert all(len(t.split()) == 8 for t in texts)

        done = _poll(read, lambda s: s.in_flight == 0)
        assert done.request_success_total == burst
        assert done.generation_tokens_total == 8 * burst
        assert done.prompt_tokens_total == 2 * burst
        assert done.admission_rejections_total == 0
        queued = _gauge(http.get(url + "/metrics").text, "vllm:request_queue_time_seconds_count")
        assert queued == burst
        oc.close()


def test_queue_limit_answers_503_and_counts_the_rejection() -> None:
    config = StandinConfig(max_num_seqs=2, max_num_queued_reqs=5, tokens_per_second=5_000, output_tokens=4)
    with BackgroundCluster(config) as cluster, httpx.Client() as http:
        url = cluster.url(cluster.ports[0])
        oc = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        read = lambda: scrape_vllm(url + "/metrics", client=http)  # noqa: E731
        cluster.pause()
        with ThreadPoolExecutor(max_workers=5) as pool:
            admitted: list[Future[object]] = [
                pool.submit(oc.completions.create, model=MODEL, prompt="x", max_tokens=4) for _ in range(5)
            ]
            _poll(read, lambda s: s.in_flight == 5)
            with pytest.raises(openai.APIStatusError) as err:
                oc.completions.create(model=MODEL, prompt="one too many", max_tokens=4)
            raw = http.post(
                url + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
            )
            cluster.resume()
            for f in admitted:
                f.result(timeout=30)
        assert err.value.status_code == 503
        assert raw.status_code == 503
        assert raw.json()["error"]["code"] == 503
        assert "busy" in raw.json()["error"]["message"]
        after = _poll(read, lambda s: s.in_flight == 0)
        assert after.admission_rejections_total == 2
        assert after.request_success_total == 5
        oc.close()


def test_client_that_goes_away_is_aborted_and_frees_its_slot() -> None:
    config = StandinConfig(max_num_seqs=1, tokens_per_second=5_000, output_tokens=4)
    with BackgroundCluster(config) as cluster, httpx.Client() as http:
        url = cluster.url(cluster.ports[0])
        read = lambda: scrape_vllm(url + "/metrics", client=http)  # noqa: E731
        cluster.pause()
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
        with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            first = next(response.iter_lines())
            assert first.startswith("data: ")
        # The stream is closed mid-way; the next request must get the only slot.
        _poll(read, lambda s: s.in_flight == 0)
        cluster.resume()
        answer = http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "y", "max_tokens": 2})
        assert answer.status_code == 200
        text = http.get(url + "/metrics").text
        aborted = [
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "vllm:request_success_total" and s.labels.get("finished_reason") == "abort"
        ]
        assert aborted == [1.0]
