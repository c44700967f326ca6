"""The policy's memory as a versioned string in the pool's status (`status.policyState`), so a restart keeps it.

`encode_state` writes compact JSON with `"v": 1`; times are integer microseconds since the epoch (exact
round trips), floats as Python writes them (exact too). `decode_state` never raises: a missing, garbled
or unknown-version text gives a fresh `PolicyState` (safe: the policy's startup hold applies), and
`decode_state_checked` also returns why, for the log. A restored state keeps its `started_at`, so a
restarted controller does not add a second startup hold: it holds what the state held. Moments after `now`
(a clock that ran ahead) are held at `now`.

The scale-down recommendations are compacted before they are written: the policy (like the HPA's
stabilisation window) only ever asks "the highest recommendation since t", and for that only the
recommendations higher than every later one matter (a descending staircase, at most one entry per
replica count). The compaction is exact for that question, so the restored pool holds what it held.

`worth_persisting` decides when a new state is different enough to be written: a moved started_at, a
last-busy moment or overflow moved by more than `slack` (30 s), a new replica level in the staircase
or a level whose time moved by more than `slack`, a new 5-minute keep or overflow bucket, a smoothed token rate
moved by over 10 %. A restarted controller therefore keeps the idle grace, the burst memory and the
scale-down delay within `slack` of what it had, and the status is not rewritten on every tick.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from typing import Any

from policies.types import PolicyState

__all__ = [
    "PERSIST_SLACK_SECONDS",
    "STATE_VERSION",
    "compact_recommendations",
    "decode_state",
    "decode_state_checked",
    "encode_state",
    "worth_persisting",
]

STATE_VERSION = 1
PERSIST_SLACK_SECONDS = 30.0
"""A remembered moment may lag by this much in the cluster: holds end at most this much early after a
restart, in exchange for writing the status about twice a minute at most instead of every tick."""
_RATE_CHANGE = 0.10  # relative move of a smoothed token rate worth a write
_RATE_FLOOR = 1.0  # tokens/s: below this, moves of a near-idle rate are noise
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_ENTRIES = 4096  # more entries than any real state holds: a garbled text, not a state


def _micros(moment: dt.datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _moment(value: object) -> dt.datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"a time must be integer microseconds, got {value!r}")
    return _EPOCH + dt.timedelta(microseconds=value)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def compact_recommendations(
    recommendations: Iterable[tuple[dt.datetime, int]],
) -> tuple[tuple[dt.datetime, int], ...]:
    """Keep the recommendations higher than every later one, in time order (exact for "max since t")."""
    ordered = sorted(recommendations, key=lambda r: r[0])
    kept: list[tuple[dt.datetime, int]] = []
    for moment, replicas in reversed(ordered):
        if not kept or replicas > kept[-1][1]:
            kept.append((moment, replicas))
    return tuple(reversed(kept))


def encode_state(state: PolicyState) -> str:
    """The state as compact versioned JSON; non-finite numbers (never expected) are left out, not written."""
    out: dict[str, Any] = {"v": STATE_VERSION}
    if state.started_at is not None:
        out["s"] = _micros(state.started_at)
    if state.last_busy_at is not None:
        out["b"] = _micros(state.last_busy_at)
    recommendations = compact_recommendations(state.recommendations)
    if recommendations:
        out["r"] = [[_micros(t), r] for t, r in recommendations]
    if state.overflow_at is not None:
        out["o"] = [_micros(state.overflow_at), state.overflow_replicas]
    if state.rates is not None and all(_finite(x) for x in state.rates):
        out["q"] = list(state.rates)
    if state.rates_at is not None:
        out["qt"] = _micros(state.rates_at)
    for key, series in (("k", state.keep_buckets), ("ok", state.overflow_buckets)):
        buckets = [[_micros(t), tok, sec] for t, tok, sec in series if _finite(tok) and _finite(sec)]
        if buckets:
            out[key] = buckets
    return json.dumps(out, separators=(",", ":"), allow_nan=False)


def _pairs(value: object, width: int, what: str) -> list[list[Any]]:
    if not isinstance(value, list) or len(value) > _MAX_ENTRIES:
        raise ValueError(f"{what} must be a list of at most {_MAX_ENTRIES} entries")
    for item in value:
        if not isinstance(item, list) or len(item) != width:
            raise ValueError(f"each entry of {what} must be a list of {width}, got {item!r}")
    return value


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _not_after(moment: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    # A moment after `now` was written by a controller whose clock ran ahead; holding it at `now`
    # keeps the hold (grace, delay) without letting it stretch into the future.
    return None if moment is None else min(moment, now)


def _parse(data: dict[str, Any], now: dt.datetime) -> PolicyState:
    started = _moment(data["s"]) if "s" in data else None
    busy = _moment(data["b"]) if "b" in data else None
    recommendations = tuple(
        (min(_moment(t), now), _count(r, "a recommendation")) for t, r in _pairs(data.get("r", []), 2, "r")
    )
    overflow_at, overflow_replicas = None, 0
    if "o" in data:
        (moment, replicas) = _pairs([data["o"]], 2, "o")[0]
        overflow_at, overflow_replicas = _moment(moment), _count(replicas, "overflow replicas")
    rates = None
    if "q" in data:
        values = _pairs([data["q"]], 3, "q")[0]
        first, second, third = (_number(x, "a rate") for x in values)
        rates = (first, second, third)
    rates_at = _moment(data["qt"]) if "qt" in data else None
    buckets, overflow_buckets = (
        tuple(
            (_moment(t), _number(tok, "bucket tokens"), _number(sec, "bucket seconds"))
            for t, tok, sec in _pairs(data.get(key, []), 3, key)
        )
        for key in ("k", "ok")
    )
    return PolicyState(
        started_at=_not_after(started, now),
        last_busy_at=_not_after(busy, now),
        recommendations=recommendations,
        overflow_at=_not_after(overflow_at, now),
        overflow_replicas=overflow_replicas,
        rates=rates,
        rates_at=_not_after(rates_at, now),
        # Buckets after `now` are dropped by the policy itself (a clock set back).
        keep_buckets=buckets,
        overflow_buckets=overflow_buckets,
    )


def decode_state_checked(text: str | None, now: dt.datetime) -> tuple[PolicyState, str | None]:
    """The state a text holds and None, or a fresh state and the reason the text could not be used."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if text is None or text == "":
        return PolicyState(), None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return PolicyState(), f"policyState is not JSON ({exc}); starting fresh"
    if not isinstance(data, dict):
        return PolicyState(), f"policyState must be a JSON object, got {type(data).__name__}; starting fresh"
    version = data.get("v")
    if version != STATE_VERSION:
        return (
            PolicyState(),
            f"policyState has version {version!r}, this controller reads {STATE_VERSION}; starting fresh",
        )
    try:
        return _parse(data, now), None
    except (ValueError, TypeError, OverflowError, KeyError) as exc:
        return PolicyState(), f"policyState is malformed ({exc}); starting fresh"


def decode_state(text: str | None, now: dt.datetime) -> PolicyState:
    """The state a text holds, or a fresh state when it holds none usable (see `decode_state_checked`)."""
    return decode_state_checked(text, now)[0]


def _moved(old: dt.datetime | None, new: dt.datetime | None, slack: float) -> bool:
    if old is None or new is None:
        return (old is None) != (new is None)
    return abs((new - old).total_seconds()) > slack


def _levels(state: PolicyState) -> dict[int, dt.datetime]:
    return {r: t for t, r in compact_recommendations(state.recommendations)}


def _rates_moved(old: tuple[float, float, float] | None, new: tuple[float, float, float] | None) -> bool:
    if old is None or new is None:
        return (old is None) != (new is None)
    return any(abs(n - o) > max(_RATE_CHANGE * abs(o), _RATE_FLOOR) for o, n in zip(old, new, strict=True))


def worth_persisting(old: PolicyState, new: PolicyState, *, slack: float = PERSIST_SLACK_SECONDS) -> bool:
    """Whether `new` differs from the persisted `old` in a way a restart should not lose (never each tick)."""
    if old.started_at != new.started_at or old.overflow_replicas != new.overflow_replicas:
        return True
    if _moved(old.last_busy_at, new.last_busy_at, slack) or _moved(old.overflow_at, new.overflow_at, slack):
        return True
    old_levels, new_levels = _levels(old), _levels(new)
    if old_levels.keys() != new_levels.keys():
        return True
    if any(_moved(old_levels[r], new_levels[r], slack) for r in new_levels):
        return True
    if {b[0] for b in new.keep_buckets} - {b[0] for b in old.keep_buckets}:
        return True
    if {b[0] for b in new.overflow_buckets} - {b[0] for b in old.overflow_buckets}:
        return True
    return _rates_moved(old.rates, new.rates)
