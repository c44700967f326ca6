"""Ebbtide's scaling policy: a pure function of (spec, observation, state, now).

The order of the rules is the order of their authority:
1. an `off` override, then a GPU-budget cap with scaleToZero, set zero outright;
2. the schedule sets a floor (open window, pre-warm ahead of an opening, keepWarm override) and a ceiling;
3. without fresh data the replicas are held (a missing metric is never zero load);
4. with data, the queue, the offered token rate and (when `replicaMeanTokensPerSecond` is set and the
   last hour overflowed enough to show bursts) the last hour's mean rate with headroom set a demand,
   and overflow that would pay for a replica adds one, and the count that would have cost least through
   the last hour, replayed (`policies.replay`), is kept; growth is step-limited and only bought where a
   GPU costs less than the API spend it would absorb (token rates smoothed first; a running replica
   priced on the last hour's average); shrinking waits out the scale-down delay, the burst memory, the
   idle grace and any GPU time already paid for;
5. the floor and ceiling clamp the result.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace

from policies.billing import paid_until
from policies.memory import hour_mean, overflow_share, smooth_rates
from policies.replay import replay_count, replay_message
from policies.schedules import active_override, open_spans, window_spans
from policies.spec import GPUCapAction, GPUPoolSpec, OverrideMode
from policies.types import Decision, DemandSample, Limits, Observation, PolicyState, Reason
from policies.worth import (
    OVERFLOW_CREDIT,
    CostCheck,
    cost_limit,
    mean_sized_replicas,
    offered_and_price,
    replica_worth,
    start_check,
)

__all__ = ["CostCheck", "billing_hold", "decide", "mean_sized_replicas", "replica_worth", "schedule_limits"]

# The share of the last hour's offered tokens sent to the fallback with a replica Ready at which the
# load counts as bursty and gets the mean's headroom. Measured on the simulator's weeks: at 2% the Azure
# code trace (its per-second p99 at 11x its mean) keeps the headroom in its busy hours and the Azure
# conversation trace (p99 at 2.9x) mostly goes without it; 3% cost the code trace 0.01-0.02 of xOPT,
# 5% 0.06 at 10x.
BURST_OVERFLOW_SHARE = 0.02

# How far ahead pre-warm looks beyond the cold start; openings further away cannot matter now.
_PREWARM_SLACK = dt.timedelta(seconds=1)


def _fmt_local(moment: dt.datetime, spec: GPUPoolSpec) -> str:
    return moment.astimezone(spec.schedule.zone).strftime("%a %H:%M %Z")


def schedule_limits(spec: GPUPoolSpec, now: dt.datetime) -> Limits:
    """The replica floor and ceiling the schedule imposes at `now`, with the reason for the floor."""
    target = spec.target
    floor, ceiling = target.min_replicas, target.max_replicas
    floor_reason, floor_message = Reason.POOL_MIN, f"pool minimum {floor}"
    ceiling_reason = Reason.POOL_MAX

    override = active_override(spec.schedule, now)
    if override is not None and override.mode is OverrideMode.OFF:
        return Limits(0, 0, Reason.OVERRIDE_OFF, f"off until {override.until.isoformat()}", Reason.OVERRIDE_OFF)

    spans = open_spans(spec.schedule, now)
    if spans:
        window_floor = max(s.window.min_replicas for s in spans)
        caps = [s.window.max_replicas for s in spans if s.window.max_replicas is not None]
        if caps and min(caps) < ceiling:
            ceiling, ceiling_reason = min(caps), Reason.WINDOW_MAX
        if window_floor > floor:
            span = max(spans, key=lambda s: s.window.min_replicas)
            floor, floor_reason = window_floor, Reason.WINDOW_OPEN
            floor_message = (
                f"window {span.window.name!r} open until {_fmt_local(span.closes, spec)}, minimum {window_floor}"
            )
    elif spec.schedule.windows and (spec.schedule.holidays.dates or spec.schedule.holidays.calendars):
        closed_by_holiday = open_spans(spec.schedule, now, include_holidays=True)
        if closed_by_holiday:
            floor_message = f"window {closed_by_holiday[0].window.name!r} closed for a holiday; pool minimum {floor}"
            floor_reason = Reason.HOLIDAY

    # Pre-warm for every opening within one cold start, also while another window is open (back to back).
    lead = dt.timedelta(seconds=spec.cold_start_seconds)
    if lead > dt.timedelta(0):
        upcoming = [
            s for s in window_spans(spec.schedule, now, now + lead + _PREWARM_SLACK) if now < s.opens <= now + lead
        ]
        if upcoming:
            first = max(upcoming, key=lambda s: (s.window.min_replicas, -s.opens.timestamp()))
            if first.window.min_replicas > floor:
                floor, floor_reason = first.window.min_replicas, Reason.PREWARM
                seconds = (first.opens - now).total_seconds()
                floor_message = (
                    f"window {first.window.name!r} opens {_fmt_local(first.opens, spec)} in {seconds:.0f} s; "
                    f"cold start {spec.cold_start_seconds} s, pre-warming {floor}"
                )

    if override is not None and override.mode is OverrideMode.KEEP_WARM and override.replicas > floor:
        floor = override.replicas
        floor_reason = Reason.OVERRIDE_KEEP_WARM
        floor_message = f"keepWarm {override.replicas} until {override.until.isoformat()}"
    floor = min(floor, target.max_replicas)
    ceiling = max(ceiling, floor)
    return Limits(floor, ceiling, floor_reason, floor_message, ceiling_reason)


def _hold(spec: GPUPoolSpec, obs: Observation, limits: Limits, reason: Reason, why: str) -> Decision:
    """No usable data: keep what runs; only the schedule may move the replicas."""
    held = min(max(obs.current_replicas, limits.floor), limits.ceiling)
    if held > obs.current_replicas:
        return Decision(held, True, limits.floor_reason, f"{limits.floor_message} ({why})", limits)
    if held < obs.current_replicas:
        return Decision(held, True, limits.ceiling_reason, f"ceiling {limits.ceiling} ({why})", limits)
    return Decision(held, False, reason, f"holding {held} replicas: {why}", limits)


def decide(spec: GPUPoolSpec, obs: Observation, state: PolicyState, now: dt.datetime) -> tuple[Decision, PolicyState]:
    """Decide how many replicas the pool should run at `now`; see the module docstring for the rules."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if state.started_at is None:
        state = replace(state, started_at=now)
    limits = schedule_limits(spec, now)

    if limits.floor_reason is Reason.OVERRIDE_OFF:
        return Decision(0, True, Reason.OVERRIDE_OFF, limits.floor_message, limits), state

    gpu_cap = spec.budget.max_gpu_hours_per_day
    # Unknown usage (the ledger could not be read) holds the cap: nothing grows past a cap it cannot
    # check, but neither does an unknown number scale the pool to zero.
    gpu_capped = gpu_cap is not None and (obs.gpu_hours_today is None or obs.gpu_hours_today >= gpu_cap)
    if gpu_capped and obs.gpu_hours_today is not None and spec.budget.on_gpu_cap is GPUCapAction.SCALE_TO_ZERO:
        message = (
            f"{obs.gpu_hours_today:.2f} GPU-hours today reached the cap of {gpu_cap:g}; all traffic to the fallback"
        )
        return Decision(0, True, Reason.GPU_BUDGET_CAP, message, limits), state

    demand = obs.demand
    if demand is None:
        why = obs.no_data_reason or "no metrics"
        return _hold(spec, obs, limits, Reason.NO_DATA_HOLD, why), state
    age = (now - demand.observed_at).total_seconds()
    if age > spec.demand.metric_max_age_seconds:
        why = f"metrics are {age:.0f} s old (limit {spec.demand.metric_max_age_seconds} s)"
        return _hold(spec, obs, limits, Reason.STALE_DATA_HOLD, why), state

    # Capacity follows the offered rate as measured (like the HPA's utilisation); money is weighed on the
    # smoothed rates, so one burst does not buy a GPU.
    offered_now = None
    if demand.input_tokens_per_second is not None and demand.output_tokens_per_second is not None:
        offered_now = demand.input_tokens_per_second + demand.output_tokens_per_second
    demand, state = smooth_rates(spec, demand, state, now)
    return _decide_on_demand(spec, obs, demand, state, now, limits, gpu_capped, offered_now)


def _decide_on_demand(
    spec: GPUPoolSpec,
    obs: Observation,
    demand: DemandSample,
    state: PolicyState,
    now: dt.datetime,
    limits: Limits,
    gpu_capped: bool,
    offered_now: float | None,
) -> tuple[Decision, PolicyState]:
    current = obs.current_replicas
    queue = demand.queue
    per_replica = spec.demand.target_queue_per_replica
    # ceil with a tolerance so 16.0000001 / 8 is 2, not 3.
    wanted = max(math.ceil(queue / per_replica - 1e-9), 0)
    reason = Reason.QUEUE_HIGH if wanted > current else Reason.QUEUE_LOW if wanted < current else Reason.STEADY
    message = f"queue {queue:g} at {per_replica:g} per replica wants {wanted}"
    details: list[tuple[str, float]] = [("queue", queue), ("wanted", float(wanted))]

    kv_target = spec.demand.target_kv_cache_usage
    if kv_target is not None and demand.kv_cache_usage is not None and obs.ready_replicas > 0:
        kv_wanted = math.ceil(obs.ready_replicas * demand.kv_cache_usage / kv_target - 1e-9)
        if kv_wanted > wanted:
            wanted = kv_wanted
            reason = Reason.KV_CACHE_HIGH if wanted > current else reason
            message = f"KV cache {demand.kv_cache_usage:.0%} over target {kv_target:.0%} wants {wanted}"

    # The offered token rate counts every request, also those the gateway sent away: a queue sampled on
    # the GPUs alone cannot see demand that overflowed.
    if offered_now is not None:
        offered = offered_now
        capacity = spec.demand.replica_tokens_per_second
        token_wanted = max(math.ceil(offered / capacity - 1e-9), 0)
        details.append(("offered_tokens_per_second", offered))
        if token_wanted > wanted:
            wanted = token_wanted
            reason = Reason.TOKENS_HIGH if wanted > current else reason
            message = f"offered {offered:.0f} tok/s at {capacity:g} per replica wants {wanted}"

    # Bursts come faster than a cold start: sized on the hour's mean with headroom, the replicas for them
    # are Ready when they come, and are not released in the lulls between them. Only for a load that
    # overflows with replicas Ready: a smooth one needs no headroom (see BURST_OVERFLOW_SHARE).
    mean = hour_mean(state.keep_buckets)
    share = overflow_share(state)
    bursty = share is not None and share >= BURST_OVERFLOW_SHARE
    mean_wanted = mean_sized_replicas(spec, mean) if bursty else 0
    if mean_wanted > 0 and mean is not None and share is not None:
        details += [("hour_mean_tokens_per_second", mean), ("hour_overflow_share", share)]
        if mean_wanted > wanted:
            wanted = mean_wanted
            # Holding what the mean asks for is steady, not a queue that went low.
            reason = Reason.MEAN_HEADROOM if wanted > current else Reason.STEADY if wanted == current else reason
            message = (
                f"last hour's mean {mean:.0f} tok/s at {spec.demand.replica_mean_tokens_per_second:g} "
                f"per replica wants {wanted} (bursty: {share:.1%} of it overflowed)"
            )

    # The count that would have cost least through the last hour, replayed (policies.replay): bursts the
    # averages miss cost there what they cost at the fallback. A pool idle for its idle grace has seen its
    # bursts end: the replay does not hold its replicas through the silence.
    replay_wanted = replay_count(spec, demand.replay_usd)
    last_busy = state.last_busy_at
    if queue <= 0 and last_busy is not None and (now - last_busy).total_seconds() >= spec.demand.idle_grace_seconds:
        replay_wanted = 0
    if replay_wanted > 0 and demand.replay_usd is not None:
        details.append(("replay_replicas", float(replay_wanted)))
        if replay_wanted > wanted:
            wanted = replay_wanted
            reason = Reason.REPLAY if wanted > current else Reason.STEADY if wanted == current else reason
            message = replay_message(demand.replay_usd, wanted)

    # Unknown spend counts as capped: a cap that cannot be checked holds.
    fallback_capped = spec.budget.max_fallback_usd_per_day is not None and (
        obs.fallback_usd_today is None or obs.fallback_usd_today >= spec.budget.max_fallback_usd_per_day
    )
    fallback_open = spec.fallback.base_url is not None and not fallback_capped

    # Bursts the averages miss show up as overflow: one more replica when the API spend it would take
    # over pays for it.
    overflow = demand.overflow_tokens_per_second or 0.0
    # Only with every replica Ready: one still starting will take over part of the overflow. A new
    # replica is credited with OVERFLOW_CREDIT of it, for at most the scale-down delay: a burst is only
    # known to last while it is seen, and with hourly billing crediting it for the whole paid hour
    # bought replicas for bursts long gone (measured: 1.77x against 1.42x the optimum at 10x).
    overflow_pays = False
    if overflow > 0 and fallback_open and current > 0 and obs.ready_replicas >= current:
        _, usd_per_token = offered_and_price(spec, demand)
        burst = start_check(
            spec,
            OVERFLOW_CREDIT * min(overflow, spec.demand.replica_tokens_per_second),
            usd_per_token,
            serving_at_most=float(spec.demand.scale_down_delay_seconds),
        )
        overflow_pays = burst.worth_it
        if overflow_pays and wanted <= current:
            wanted = current + 1
            reason = Reason.OVERFLOW_PAYS
            message = (
                f"overflowing {overflow:.0f} tok/s: half of it is ${burst.api_usd:.2f} of API spend over "
                f"{burst.serving_seconds or 0:.0f} s vs ${burst.gpu_usd:.2f} of GPU for "
                f"{burst.horizon_seconds:.0f} s: adding a replica"
            )
    desired = wanted

    # Only replicas that pay for themselves against the fallback; the window floor still holds below.
    cost_limited = False
    if desired > 0 and fallback_open:
        affordable, check = cost_limit(spec, demand, desired, current, mean, mean_wanted)
        if affordable < desired and check is not None:
            cost_limited = True
            verb = "keeping" if affordable < current else "staying at"
            message = (
                f"{message}; replica {affordable + 1} would absorb {check.absorbed_tokens_per_second:.0f} tok/s "
                f"= ${check.api_usd:.2f} of API spend over {check.horizon_seconds:.0f} s vs ${check.gpu_usd:.2f} "
                f"of GPU; {verb} {affordable}, the fallback serves the rest"
            )
            details += [("api_usd", check.api_usd), ("gpu_usd", check.gpu_usd)]
            desired = affordable
            reason = Reason.COST_OVERFLOW
            # The replay has priced its count against the fallback already.
            if replay_wanted > desired and demand.replay_usd is not None:
                desired = min(replay_wanted, wanted)
                reason, message = Reason.REPLAY, replay_message(demand.replay_usd, desired)
    elif desired > current and fallback_capped:
        reason = Reason.FALLBACK_BUDGET_CAP
        if obs.fallback_usd_today is None:
            message = f"{message}; fallback spend today unknown (ledger unreadable), the cap holds: GPUs serve all"
        else:
            message = f"{message}; fallback spend ${obs.fallback_usd_today:.2f} reached today's cap, GPUs serve all"
    step = spec.demand.max_scale_up_step
    if desired > current + step:
        desired = current + step
        reason = Reason.STEP_LIMIT
        message = f"{message}; step limit {step}"

    last_busy = now if queue > 0 else state.last_busy_at
    window = dt.timedelta(seconds=spec.demand.scale_down_delay_seconds)
    recommendations = (*tuple(r for r in state.recommendations if now - r[0] < window), (now, desired))
    new_state = replace(state, last_busy_at=last_busy, recommendations=recommendations)
    if overflow_pays:
        new_state = replace(new_state, overflow_at=now, overflow_replicas=current)

    if desired < current:
        desired, reason, message = _shrink(
            spec, obs, state, now, desired, reason, message, details, gpu_capped, cost_limited
        )

    # With onGpuCap: hold, nothing grows on demand; the schedule's floor still holds (use scaleToZero to
    # let the cap win over windows).
    if gpu_capped and desired > current:
        desired, reason = current, Reason.GPU_BUDGET_CAP
        if obs.gpu_hours_today is None:
            message = f"{message}; GPU-hours today unknown (ledger unreadable), no scale-up past the cap"
        else:
            message = f"{message}; GPU-hours today ({obs.gpu_hours_today:.2f}) reached the cap, no scale-up"
    if desired < limits.floor:
        desired, reason, message = limits.floor, limits.floor_reason, f"{limits.floor_message}; {message}"
    if desired > limits.ceiling:
        desired = limits.ceiling
        reason = limits.ceiling_reason
        message = f"{message}; capped at {limits.ceiling} ({limits.ceiling_reason.value})"
    message = f"{current} → {desired}: {message}" if desired != current else f"{desired} replicas: {message}"
    return Decision(desired, True, reason, message, limits, tuple(details)), new_state


def _shrink(
    spec: GPUPoolSpec,
    obs: Observation,
    state: PolicyState,
    now: dt.datetime,
    desired: int,
    reason: Reason,
    message: str,
    details: list[tuple[str, float]],
    gpu_capped: bool,
    cost_limited: bool,
) -> tuple[int, Reason, str]:
    """Apply the brakes on a scale-down: startup hold, scale-down delay, idle grace, paid GPU time."""
    current = obs.current_replicas
    delay = spec.demand.scale_down_delay_seconds
    if state.started_at is not None and (now - state.started_at).total_seconds() < delay:
        return current, Reason.STARTUP_HOLD, f"{message}; autoscaler started under {delay} s ago, not scaling down"

    # Like the HPA's stabilisation window: go down only to the highest recommendation of the delay.
    window = dt.timedelta(seconds=delay)
    recent = [r for t, r in state.recommendations if now - t < window]
    stabilised = min(max([desired, *recent]), current)
    if stabilised > desired:
        desired, reason = stabilised, Reason.SCALE_DOWN_DELAY
        message = f"{message}; demand was higher within the last {delay} s, holding {desired}"

    # Replicas added for bursts stay between bursts: the averages cannot see them, the overflow did.
    memory = spec.demand.overflow_memory_seconds
    if state.overflow_at is not None and not cost_limited and (now - state.overflow_at).total_seconds() < memory:
        held = min(state.overflow_replicas, current)
        if held > desired:
            ago = (now - state.overflow_at).total_seconds()
            desired, reason = held, Reason.BURST_HOLD
            message = f"{message}; the gateway overflowed {ago:.0f} s ago with {held} Ready, holding {held}"

    # The idle grace is for an empty queue; demand that is too small to pay for a GPU goes to the fallback.
    # A fresh state (a restart) that finds replicas running counts the grace from its own start: it has
    # not seen the queue empty for longer than that.
    last_busy = state.last_busy_at
    if last_busy is None and current > 0:
        last_busy = state.started_at
    if desired == 0 and last_busy is not None and not cost_limited:
        idle = (now - last_busy).total_seconds()
        if idle < spec.demand.idle_grace_seconds:
            desired, reason = 1, Reason.IDLE_GRACE
            message = f"{message}; idle {idle:.0f} s of {spec.demand.idle_grace_seconds} s grace, keeping 1"
        else:
            reason, message = Reason.IDLE_TO_ZERO, f"{message}; idle {idle:.0f} s, scaling to zero"

    if desired < current and not gpu_capped:
        desired, reason, message = billing_hold(spec, obs, now, desired, reason, message, details)
    return desired, reason, message


RELEASE_MARGIN_FLOOR_SECONDS = 15.0
"""The smallest release margin in force: one simulator tick (the daemon ticks every 5 s), so a replica
is released in the last tick of its paid period rather than held into the next one."""


def billing_hold(
    spec: GPUPoolSpec,
    obs: Observation,
    now: dt.datetime,
    desired: int,
    reason: Reason,
    message: str,
    details: list[tuple[str, float]],
) -> tuple[int, Reason, str]:
    """Keep replicas whose current billed period is already paid until shortly before it ends."""
    current = obs.current_replicas
    # Below one control tick the margin could never be met at a tick (per-second billing has under a
    # second left at any moment), and the replica would be held into period after paid period.
    margin = max(spec.billing.release_margin_seconds, RELEASE_MARGIN_FLOOR_SECONDS)
    remaining = sorted(
        max((paid_until(s, now, spec.billing) - now).total_seconds(), 0.0) for s in obs.replica_billing_starts
    )
    # Replicas whose start is unknown are treated as releasable: holding them could cost without limit.
    unknown = max(current - len(remaining), 0)
    releasable = unknown + sum(1 for r in remaining if r <= margin)
    to_remove = current - desired
    if releasable >= to_remove:
        return desired, reason, message
    kept = to_remove - releasable
    paid_kept = sum(sorted(r for r in remaining if r > margin)[:kept])
    details.append(("paid_seconds_kept", paid_kept))
    desired += kept
    return (
        desired,
        Reason.BILLING_HOLD,
        f"{message}; keeping {kept} replica(s) whose billed period is paid: {paid_kept / 60:.0f} paid minutes left",
    )
