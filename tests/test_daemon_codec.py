"""The PolicyState codec: exact round trips, safe failures, compaction that keeps the decisions, and writes
only on meaningful change."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.daemon.codec import (
    PERSIST_SLACK_SECONDS,
    compact_recommendations,
    decode_state,
    decode_state_checked,
    encode_state,
    worth_persisting,
)
from policies.scaling import decide
from policies.spec import GPUPoolSpec
from policies.types import DemandSample, Observation, PolicyState

UTC = dt.UTC
NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
FUTURE = dt.datetime(2100, 1, 1, tzinfo=UTC)
ZONES = [UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-3))]

moments = st.builds(
    lambda base, micros, zone: (base + dt.timedelta(microseconds=micros)).astimezone(zone),
    st.just(dt.datetime(2020, 1, 1, tzinfo=UTC)),
    st.integers(0, 10 * 365 * 86_400 * 1_000_000),
    st.sampled_from(ZONES),
)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@st.composite
def states(draw: st.DrawFn, compact: bool = True) -> PolicyState:
    recommendations = tuple(sorted(draw(st.lists(st.tuples(moments, st.integers(0, 64)), max_size=12))))
    if compact:
        recommendations = compact_recommendations(recommendations)
    return PolicyState(
        started_at=draw(st.none() | moments),
        last_busy_at=draw(st.none() | moments),
        recommendations=recommendations,
        overflow_at=(overflow := draw(st.none() | moments)),
        overflow_replicas=draw(st.integers(0, 64)) if overflow is not None else 0,
        rates=draw(st.none() | st.tuples(finite, finite, finite)),
        rates_at=draw(st.none() | moments),
        keep_buckets=tuple(draw(st.lists(st.tuples(moments, finite, finite), max_size=13))),
        overflow_buckets=tuple(draw(st.lists(st.tuples(moments, finite, finite), max_size=13))),
    )


@settings(max_examples=300, deadline=None)
@given(states())
def test_round_trip_is_exact(state: PolicyState) -> None:
    text = encode_state(state)
    assert json.loads(text)["v"] == 1
    back, problem = decode_state_checked(text, FUTURE)
    assert problem is None
    assert back == state
    assert encode_state(back) == text


@settings(max_examples=200, deadline=None)
@given(states(compact=False), moments, st.integers(0, 3 * 3600))
def test_compaction_keeps_the_highest_recommendation_of_any_window(
    state: PolicyState, now: dt.datetime, window_seconds: int
) -> None:
    back = decode_state(encode_state(state), FUTURE)
    window = dt.timedelta(seconds=window_seconds)
    latest = max((t for t, _ in state.recommendations), default=now)
    now = max(now, latest)  # the policy asks only about windows ending now, after every recommendation

    def highest(s: PolicyState) -> int | None:
        return max((r for t, r in s.recommendations if now - t < window), default=None)

    assert highest(back) == highest(state)
    assert len(back.recommendations) <= len({r for _, r in state.recommendations})


SPEC = GPUPoolSpec.model_validate(
    {
        "target": {"deployment": "vllm", "maxReplicas": 8},
        "demand": {"scaleDownDelaySeconds": 120, "idleGraceSeconds": 300, "targetQueuePerReplica": 4},
        "fallback": {"providers": [{"name": "p", "baseUrl": "https://api.example.com/v1", "model": "m"}]},
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 30)), min_size=2, max_size=40), st.integers(1, 39))
def test_a_restored_state_decides_as_the_original(load: list[tuple[int, int]], cut: int) -> None:
    """Drive the policy, write and read the state back mid-run: the decisions that follow are the same."""
    cut = cut % len(load)
    now, current = NOW, 1
    original = PolicyState()
    restored: PolicyState | None = None
    for i, (queue, step) in enumerate(load):
        now += dt.timedelta(seconds=step)
        demand = DemandSample(observed_at=now, waiting=queue / 2, running=queue / 2)
        obs = Observation(current, current, demand)
        decision, original = decide(SPEC, obs, original, now)
        if restored is not None:
            other, restored = decide(SPEC, obs, restored, now)
            assert (other.desired_replicas, other.reason, other.valid) == (
                decision.desired_replicas,
                decision.reason,
                decision.valid,
            )
        if i == cut:
            restored = decode_state(encode_state(original), now)
        current = decision.desired_replicas if decision.valid else current


def test_missing_text_is_a_fresh_state_without_complaint() -> None:
    assert decode_state_checked(None, NOW) == (PolicyState(), None)
    assert decode_state_checked("", NOW) == (PolicyState(), None)


def test_garbage_and_unknown_versions_give_a_fresh_state_and_say_why() -> None:
    cases = {
        "{not json": "not JSON",
        "[1, 2]": "must be a JSON object",
        '{"v": 2, "s": 1}': "version 2",
        '{"s": 1}': "version None",
        '{"v": 1, "s": "yesterday"}': "integer microseconds",
        '{"v": 1, "r": [[1, -3]]}': "non-negative",
        '{"v": 1, "r": [[1]]}': "list of 2",
        '{"v": 1, "q": [1, 2]}': "list of 3",
        '{"v": 1, "q": [1, 2, "x"]}': "finite number",
        '{"v": 1, "o": [1e400, 2]}': "integer microseconds",
        '{"v": 1, "s": 99999999999999999999999}': "malformed",
        '{"v": 1, "k": 5}': "must be a list",
        '{"v": 1, "ok": [[1, 2]]}': "list of 3",
        "[" * 100_000: "not JSON",
    }
    for text, expected in cases.items():
        state, problem = decode_state_checked(text, NOW)
        assert state == PolicyState(), text
        assert problem is not None and expected in problem, (text, problem)
        assert decode_state(text, NOW) == PolicyState()


def test_moments_after_now_are_held_at_now() -> None:
    ahead = NOW + dt.timedelta(minutes=5)
    state = PolicyState(started_at=ahead, last_busy_at=ahead, recommendations=((ahead, 3),), overflow_at=ahead)
    back = decode_state(encode_state(state), NOW)
    assert back.started_at == back.last_busy_at == back.overflow_at == NOW
    assert back.recommendations == ((NOW, 3),)


def test_non_finite_numbers_are_left_out_not_written() -> None:
    state = PolicyState(rates=(float("nan"), 1.0, 2.0), keep_buckets=((NOW, float("inf"), 3.0), (NOW, 1.0, 2.0)))
    back = decode_state(encode_state(state), NOW)
    assert back.rates is None
    assert back.keep_buckets == ((NOW, 1.0, 2.0),)


def test_encoding_is_compact() -> None:
    state = PolicyState(
        started_at=NOW,
        last_busy_at=NOW,
        recommendations=tuple((NOW + dt.timedelta(seconds=5 * i), 2) for i in range(60)),
        rates=(100.0, 20.0, 0.0),
        rates_at=NOW,
        keep_buckets=tuple((NOW + dt.timedelta(minutes=5 * i), 1000.0, 300.0) for i in range(12)),
    )
    text = encode_state(state)
    assert " " not in text
    assert len(text) < 600
    assert len(decode_state(text, FUTURE).recommendations) == 1


# --- worth_persisting ------------------------------------------------------------------------------------

BASE = PolicyState(
    started_at=NOW,
    last_busy_at=NOW,
    recommendations=((NOW, 3),),
    rates=(1000.0, 200.0, 0.0),
    rates_at=NOW,
    keep_buckets=((NOW, 1000.0, 300.0),),
)


def later(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def test_the_same_state_a_tick_later_is_not_worth_a_write() -> None:
    tick = dataclasses.replace(
        BASE,
        last_busy_at=later(5),
        recommendations=((later(5), 3),),
        rates=(1010.0, 201.0, 0.0),
        rates_at=later(5),
        keep_buckets=((NOW, 6000.0, 305.0),),
    )
    assert not worth_persisting(BASE, tick)
    assert not worth_persisting(BASE, BASE)


def test_meaningful_changes_are_worth_a_write() -> None:
    slack = PERSIST_SLACK_SECONDS + 1
    changes = {
        "started": dataclasses.replace(BASE, started_at=later(1)),
        "busy moved": dataclasses.replace(BASE, last_busy_at=later(slack)),
        "busy forgotten": dataclasses.replace(BASE, last_busy_at=None),
        "overflow": dataclasses.replace(BASE, overflow_at=NOW, overflow_replicas=2),
        "overflow moved": (
            dataclasses.replace(BASE, overflow_at=NOW, overflow_replicas=2),
            dataclasses.replace(BASE, overflow_at=later(slack), overflow_replicas=2),
        ),
        "new level": dataclasses.replace(BASE, recommendations=((NOW, 3), (later(5), 1))),
        "level expired": dataclasses.replace(BASE, recommendations=((later(5), 1),)),
        "level refreshed": dataclasses.replace(BASE, recommendations=((later(slack), 3),)),
        "new bucket": dataclasses.replace(BASE, keep_buckets=((NOW, 1000.0, 300.0), (later(300), 5.0, 5.0))),
        "new overflow bucket": dataclasses.replace(BASE, overflow_buckets=((later(300), 5.0, 5.0),)),
        "rates moved": dataclasses.replace(BASE, rates=(1200.0, 200.0, 0.0)),
        "rates lost": dataclasses.replace(BASE, rates=None),
    }
    for name, change in changes.items():
        old, new = change if isinstance(change, tuple) else (BASE, change)
        assert worth_persisting(old, new), name


def test_a_steady_pool_writes_about_twice_a_minute_at_most() -> None:
    """Drive the policy every 5 s under steady load: far fewer writes than ticks."""
    now, persisted, state, writes, ticks = NOW, PolicyState(), PolicyState(), 0, 720
    for _ in range(ticks):
        now += dt.timedelta(seconds=5)
        demand = DemandSample(now, waiting=2, running=6, input_tokens_per_second=900, output_tokens_per_second=300)
        _, state = decide(SPEC, Observation(2, 2, demand), state, now)
        if worth_persisting(persisted, state):
            persisted, writes = state, writes + 1
    # At most one write per slack for the moving moments, plus one per new 5-minute keep bucket.
    assert 0 < writes <= ticks * 5 / PERSIST_SLACK_SECONDS + ticks * 5 / 300
    assert writes < ticks / 5
