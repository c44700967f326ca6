"""The demand seam: raw engine samples and gateway counters to the policy's DemandSample."""

from __future__ import annotations

import datetime as dt

import pytest

from controller.demand.aggregate import (
    EngineTotals,
    GatewayCounters,
    GatewaySeries,
    Reading,
    ReadingWindow,
    aggregate,
    counter_increase,
)
from controller.ports import NoData
from controller.scrape.sample import EngineSample
from policies.types import DemandSample

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
PODS = ("a", "b", "c")


def engine(
    waiting: int = 0,
    running: int = 0,
    *,
    prompt: float | None = 0.0,
    generation: float | None = 0.0,
    kv: float | None = None,
) -> EngineSample:
    return EngineSample(
        waiting=waiting,
        running=running,
        kv_cache_usage=kv,
        prompt_tokens_total=prompt,
        generation_tokens_total=generation,
        request_success_total=0.0,
        admission_rejections_total=None,
        engines=1,
    )


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def ok(result: tuple[DemandSample | NoData, Reading | None]) -> tuple[DemandSample, Reading]:
    sample, reading = result
    assert isinstance(sample, DemandSample), sample
    assert reading is not None
    return sample, reading


def test_engines_sum_and_kv_cache_is_the_mean() -> None:
    engines = {"a": engine(2, 5, kv=0.2), "b": engine(1, 3, kv=0.6), "c": engine(0, 0, kv=None)}
    sample, reading = ok(aggregate(engines, PODS, None, None, T0))
    assert (sample.waiting, sample.running, sample.overflow_in_flight) == (3.0, 8.0, 0.0)
    assert sample.kv_cache_usage == pytest.approx(0.4)
    assert sample.observed_at == T0
    # The first reading has nothing to take rates against: unknown, not zero.
    assert sample.input_tokens_per_second is None
    assert sample.output_tokens_per_second is None
    assert sample.overflow_tokens_per_second is None
    assert reading.at == T0 and set(reading.engines) == set(PODS) and reading.gateway is None


@pytest.mark.parametrize(
    "engines",
    [
        {"a": engine(4, 4), "b": engine(4, 4)},  # c not read at all
        {"a": engine(4, 4), "b": engine(4, 4), "c": NoData("scrape of http://c failed: ReadTimeout")},
    ],
    ids=["missing", "nodata"],
)
def test_one_of_three_pods_unreadable_is_no_data_not_a_smaller_queue(
    engines: dict[str, EngineSample | NoData],
) -> None:
    sample, reading = aggregate(engines, PODS, None, None, T0)
    assert isinstance(sample, NoData)
    assert "1 of 3 Ready pods unreadable" in sample.reason and "pod c" in sample.reason
    assert reading is None


def test_several_unreadable_pods_are_counted() -> None:
    sample, _ = aggregate({"a": engine()}, PODS, None, None, T0)
    assert isinstance(sample, NoData)
    assert "2 of 3" in sample.reason and "and 1 more" in sample.reason


def test_source_failure_passes_through() -> None:
    sample, reading = aggregate(NoData("no Ready pods listed"), PODS, None, None, T0)
    assert sample == NoData("no Ready pods listed") and reading is None


def test_pods_that_are_no_longer_ready_do_not_count() -> None:
    engines = {"a": engine(1, 1), "old": engine(50, 50)}
    sample, reading = ok(aggregate(engines, ["a"], None, None, T0))
    assert (sample.waiting, sample.running) == (1.0, 1.0)
    assert set(reading.engines) == {"a"}


def test_no_ready_pods_and_no_gateway_is_an_empty_queue() -> None:
    sample, _ = ok(aggregate({}, [], None, None, T0))
    assert sample.queue == 0.0


def test_engine_token_rates_over_the_observed_interval() -> None:
    first = {"a": engine(prompt=1000, generation=100), "b": engine(prompt=500, generation=50)}
    _, before = ok(aggregate(first, ["a", "b"], None, None, at(0)))
    later = {"a": engine(prompt=4000, generation=400), "b": engine(prompt=500, generation=250)}
    sample, _ = ok(aggregate(later, ["a", "b"], None, before, at(30)))
    assert sample.input_tokens_per_second == pytest.approx(3000 / 30)
    assert sample.output_tokens_per_second == pytest.approx(500 / 30)
    assert sample.overflow_tokens_per_second is None  # only the gateway knows about saturation


def test_engine_counter_reset_is_a_restart_not_negative_demand() -> None:
    _, before = ok(aggregate({"a": engine(prompt=90_000, generation=9_000)}, ["a"], None, None, at(0)))
    sample, _ = ok(aggregate({"a": engine(prompt=600, generation=60)}, ["a"], None, before, at(60)))
    # Restarted: it counted 600 since, not -89,400.
    assert sample.input_tokens_per_second == pytest.approx(10.0)
    assert sample.output_tokens_per_second == pytest.approx(1.0)


def test_a_new_pod_counts_from_zero() -> None:
    _, before = ok(aggregate({"a": engine(prompt=1000)}, ["a"], None, None, at(0)))
    sample, _ = ok(aggregate({"a": engine(prompt=1600), "b": engine(prompt=300)}, ["a", "b"], None, before, at(10)))
    assert sample.input_tokens_per_second == pytest.approx(90.0)


def test_an_engine_without_token_counters_gives_unknown_rates() -> None:
    _, before = ok(aggregate({"a": engine(prompt=None, generation=None)}, ["a"], None, None, at(0)))
    sample, _ = ok(aggregate({"a": engine(prompt=None, generation=None)}, ["a"], None, before, at(10)))
    assert sample.input_tokens_per_second is None and sample.output_tokens_per_second is None


def test_no_interval_gives_unknown_rates() -> None:
    _, before = ok(aggregate({"a": engine(prompt=10)}, ["a"], None, None, at(5)))
    sample, _ = ok(aggregate({"a": engine(prompt=20)}, ["a"], None, before, at(5)))
    assert sample.input_tokens_per_second is None


def gw(**fields: float) -> GatewaySeries:
    return GatewaySeries(**fields)


def test_gateway_held_is_queue_and_fallback_in_flight_is_overflow() -> None:
    gateway = GatewayCounters({"gw-1": gw(held=3, fallback_in_flight=2), "gw-2": gw(held=1, fallback_in_flight=4)})
    sample, reading = ok(aggregate({"a": engine(2, 5)}, ["a"], gateway, None, T0))
    assert sample.waiting == 2 + 3 + 1
    assert sample.running == 5
    assert sample.overflow_in_flight == 6
    assert sample.queue == 17
    assert reading.gateway is not None and set(reading.gateway) == {"gw-1", "gw-2"}


def test_held_at_zero_ready_replicas_is_demand() -> None:
    sample, _ = ok(aggregate({}, [], GatewayCounters({"gw": gw(held=5)}), None, T0))
    assert sample.waiting == 5 and sample.queue == 5


def test_offered_rates_come_from_the_gateway_when_present() -> None:
    # The engines served 100 prompt tokens/s; the gateway was offered 400/s (the rest went to the fallback).
    first_gw = GatewayCounters(
        {"gw": gw(prompt_tokens_total=1_000, completion_tokens_total=100, saturation_tokens_total=0)}
    )
    _, before = ok(aggregate({"a": engine(prompt=0, generation=0)}, ["a"], first_gw, None, at(0)))
    later_gw = GatewayCounters(
        {"gw": gw(prompt_tokens_total=5_000, completion_tokens_total=600, saturation_tokens_total=2_400)}
    )
    sample, _ = ok(aggregate({"a": engine(prompt=1_000, generation=100)}, ["a"], later_gw, before, at(10)))
    assert sample.input_tokens_per_second == pytest.approx(400.0)
    assert sample.output_tokens_per_second == pytest.approx(50.0)
    assert sample.overflow_tokens_per_second == pytest.approx(240.0)


def test_offered_rates_leave_out_what_no_replica_could_serve_on_time() -> None:
    # Of 4,000 prompt and 500 completion tokens offered in 10 s, 3,000 and 100 were of prompts too long
    # for the objective, sent away: the GPUs were offered the rest. Saturation is counted as before.
    first = GatewayCounters({"gw": gw(prompt_tokens_total=1_000, completion_tokens_total=100)})
    _, before = ok(aggregate({}, [], first, None, at(0)))
    later = GatewayCounters(
        {
            "gw": gw(
                prompt_tokens_total=5_000,
                completion_tokens_total=600,
                saturation_tokens_total=50,
                beyond_prompt_tokens_total=3_000,
                beyond_completion_tokens_total=100,
            )
        }
    )
    sample, _ = ok(aggregate({}, [], later, before, at(10)))
    assert sample.input_tokens_per_second == pytest.approx(100.0)
    assert sample.output_tokens_per_second == pytest.approx(40.0)
    assert sample.overflow_tokens_per_second == pytest.approx(5.0)
    # A process that restarted counts both from zero: never a negative rate.
    reset = GatewayCounters({"gw": gw(prompt_tokens_total=200, beyond_prompt_tokens_total=150)})
    sample, _ = ok(aggregate({}, [], reset, before, at(10)))
    assert sample.input_tokens_per_second == pytest.approx(5.0)


def test_gateway_rates_run_between_the_gateway_scrape_times() -> None:
    first = GatewayCounters({"gw": gw(prompt_tokens_total=100)}, at=at(-1))
    _, before = ok(aggregate({}, [], first, None, at(0)))
    assert before.gateway_at == at(-1)
    later = GatewayCounters({"gw": gw(prompt_tokens_total=700)}, at=at(5))
    sample, _ = ok(aggregate({}, [], later, before, at(10)))
    assert sample.input_tokens_per_second == pytest.approx(100.0)  # 600 tokens over 6 s, not over 10 s


def test_gateway_counter_reset_on_one_process() -> None:
    first = GatewayCounters({"gw-1": gw(prompt_tokens_total=10_000), "gw-2": gw(prompt_tokens_total=20_000)})
    _, before = ok(aggregate({}, [], first, None, at(0)))
    # gw-2 restarted and counted 500 since; gw-1 grew by 1,000.
    later = GatewayCounters({"gw-1": gw(prompt_tokens_total=11_000), "gw-2": gw(prompt_tokens_total=500)})
    sample, _ = ok(aggregate({}, [], later, before, at(10)))
    assert sample.input_tokens_per_second == pytest.approx(150.0)


def test_gateway_appearing_after_the_baseline_counts_from_zero() -> None:
    _, before = ok(aggregate({"a": engine()}, ["a"], None, None, at(0)))
    gateway = GatewayCounters({"gw": gw(prompt_tokens_total=200, saturation_tokens_total=20)})
    sample, _ = ok(aggregate({"a": engine()}, ["a"], gateway, before, at(20)))
    assert sample.input_tokens_per_second == pytest.approx(10.0)
    assert sample.overflow_tokens_per_second == pytest.approx(1.0)


def test_gateway_absent_leaves_gateway_fields_at_their_no_gateway_values() -> None:
    sample, _ = ok(aggregate({"a": engine(1, 2)}, ["a"], None, None, T0))
    assert sample.overflow_in_flight == 0.0 and sample.overflow_tokens_per_second is None


def test_gateway_unreadable_is_no_data() -> None:
    sample, reading = aggregate({"a": engine(1, 1)}, ["a"], NoData("gw-2: ConnectError"), None, T0)
    assert isinstance(sample, NoData) and "gateway" in sample.reason and "gw-2" in sample.reason
    assert reading is None


def test_fallback_usd_total_sums_processes() -> None:
    assert GatewayCounters({"a": gw(fallback_usd_total=1.5), "b": gw(fallback_usd_total=2.0)}).fallback_usd_total == 3.5


def test_prometheus_totals_keep_their_rates_and_time() -> None:
    evaluated = at(-7)
    totals = EngineTotals(
        waiting=4,
        running=6,
        kv_cache_usage=0.5,
        prompt_tokens_per_second=120.0,
        generation_tokens_per_second=30.0,
        observed_at=evaluated,
    )
    sample, _ = ok(aggregate(totals, PODS, GatewayCounters({"gw": gw(held=2)}), None, T0))
    assert (sample.waiting, sample.running, sample.kv_cache_usage) == (6, 6, 0.5)
    assert sample.observed_at == evaluated
    # With a gateway present the offered rate is the gateway's: unknown until there is a baseline.
    assert sample.input_tokens_per_second is None
    sample, _ = ok(aggregate(totals, PODS, None, None, T0))
    assert (sample.input_tokens_per_second, sample.output_tokens_per_second) == (120.0, 30.0)


def test_a_ready_pod_without_fresh_series_in_prometheus_is_no_data_not_a_smaller_queue() -> None:
    # The server's sums left the pod out (its scrapes fail, its series went stale): not a shorter queue.
    totals = EngineTotals(4, 6, None, None, None, T0, pods=frozenset({"vllm-a"}))
    sample, reading = aggregate(totals, ["vllm-a", "vllm-b", "vllm-c"], None, None, T0)
    assert isinstance(sample, NoData) and reading is None
    assert sample.reason == "2 of 3 Ready pods have no fresh series in Prometheus (pod vllm-b and 1 more)"
    # Every Ready pod seen (a pod still starting or going may be seen too): the sums are whole.
    totals = EngineTotals(4, 6, None, None, None, T0, pods=frozenset({"vllm-a", "vllm-b", "vllm-old"}))
    sample, _ = ok(aggregate(totals, ["vllm-a", "vllm-b"], None, None, T0))
    assert (sample.waiting, sample.running) == (4, 6)
    # No `pods` query configured: nothing to check against.
    sample, _ = ok(aggregate(EngineTotals(4, 6, None, None, None, T0), ["vllm-a", "vllm-b"], None, None, T0))
    assert sample.waiting == 4


def test_invalid_totals_are_no_data() -> None:
    totals = EngineTotals(float("nan"), 1, None, None, None, T0)
    sample, _ = aggregate(totals, [], None, None, T0)
    assert isinstance(sample, NoData) and "invalid" in sample.reason


def test_counter_increase() -> None:
    assert counter_increase(10, 4) == 6
    assert counter_increase(3, 40) == 3
    assert counter_increase(7, None) == 7
    assert counter_increase(5, 5) == 0


def test_reading_window_takes_rates_about_a_window_back() -> None:
    window = ReadingWindow(60)
    assert window.baseline(at(0)) is None
    for t in range(0, 301, 15):
        if t:
            chosen = window.baseline(at(t))
            assert chosen is not None
            # Within the first minute the oldest reading serves; after it, the one exactly 60 s back.
            assert chosen.at == at(max(t - 60, 0))
        window.add(Reading(at=at(t)))
    assert len(window._readings) <= 5


def test_reading_window_skips_a_missing_reading() -> None:
    window = ReadingWindow(60)
    for t in (0, 15, 45, 60, 75):  # the read at 30 failed
        window.add(Reading(at=at(t)))
    chosen = window.baseline(at(90))
    assert chosen is not None and chosen.at == at(15)


def test_reading_window_with_a_resolution_keeps_fewer_readings() -> None:
    window = ReadingWindow(60, resolution=5)
    for t in range(0, 200):  # a read every second
        window.add(Reading(at=at(t)))
    assert len(window._readings) <= 14
    chosen = window.baseline(at(200))
    assert chosen is not None and 60 <= (at(200) - chosen.at).total_seconds() < 65
    with pytest.raises(ValueError, match="resolution"):
        ReadingWindow(60, resolution=60)


def test_reading_window_survives_the_clock_going_back() -> None:
    window = ReadingWindow(60)
    window.add(Reading(at=at(100)))
    window.add(Reading(at=at(10)))
    chosen = window.baseline(at(20))
    assert chosen is not None and chosen.at == at(10)
    with pytest.raises(ValueError, match="rate window"):
        ReadingWindow(0)
