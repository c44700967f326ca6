"""GPU, API or both: each kind's best row of a simulation, and the one to choose.

The three ways to serve a pool's traffic are its own GPUs alone (the baselines that queue every request
on vLLM: `always_on`, `hpa`, `keda`), the paid API alone (`api_only`), and both (Ebbtide: GPUs while
they keep up, the API for the rest). Rows are compared on their SLO-priced cost, the report's ×OPT
figure: the dollars spent plus the API's price of every request not served within the objective, what
sending it to the API on time would have cost. A row that is cheap because its requests wait reads as
dear as the API it would have needed, so the kind chosen is the one that serves the objective for
least; the cheapest row in plain dollars is named beside it when it is another, with its share on time.

Only the rows of policies a pool can run are kinds; the offline references (the bounds and the
optimum's plan, which knows the future) are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.sim.runner import EBBTIDE, PolicyRun
from policies.baselines import baseline
from policies.overflow import Routing

__all__ = ["Pick", "Verdict", "kind_of", "render_verdict", "verdict", "verdict_json"]

BOTH, GPU, API = "both", "GPU", "API"
_KIND_ORDER = (BOTH, GPU, API)


_BY_ROUTING = {Routing.QUEUE: GPU, Routing.FALLBACK: API}
"""A runnable baseline's kind, by how it routes: queued on vLLM, or all to the fallback."""


def kind_of(name: str) -> str | None:
    """The kind of the policy row `name`, or None for an offline reference or an unknown row."""
    if name == EBBTIDE:
        return BOTH
    try:
        entry = baseline(name)
    except KeyError:
        return None
    return _BY_ROUTING.get(entry.routing) if entry.build is not None else None


@dataclass(frozen=True, slots=True)
class Pick:
    """One row as the verdict weighs it."""

    kind: str
    name: str
    total_usd: float
    slo_priced_usd: float
    slo_attainment: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """Each kind's row of least SLO-priced cost (in kind order), the one chosen, the cheapest in dollars."""

    picks: tuple[Pick, ...]
    choice: Pick
    cheapest: Pick
    """The row of least plain dollars among every kind's rows (the choice itself, or one that is cheaper
    because it leaves requests late)."""
    slo_ttft_seconds: float


def verdict(runs: Mapping[str, PolicyRun]) -> Verdict | None:
    """The verdict over the policy rows in `runs`; None unless at least two kinds ran with outcomes.

    A row without an SLO-priced cost or per-request latencies is not weighed. Ties go to the kind
    listed first (both, GPU, API), then to the row first in `runs`.
    """
    rows: list[Pick] = []
    for name, run in runs.items():
        kind = kind_of(name)
        attained = run.slo_attainment
        if kind is None or run.slo_priced_usd is None or attained is None:
            continue
        rows.append(Pick(kind, name, run.total_usd, run.slo_priced_usd, attained))
    best: dict[str, Pick] = {}
    for pick in rows:
        held = best.get(pick.kind)
        if held is None or pick.slo_priced_usd < held.slo_priced_usd:
            best[pick.kind] = pick
    if len(best) < 2:
        return None
    picks = tuple(best[k] for k in _KIND_ORDER if k in best)
    choice = min(picks, key=lambda p: p.slo_priced_usd)
    cheapest = min(rows, key=lambda p: p.total_usd)
    slo_s = runs[choice.name].slo_ttft_seconds
    return Verdict(picks, choice, cheapest, slo_s)


def _below(choice: Pick, other: Pick) -> str:
    name = "both" if other.kind == BOTH else f"{other.kind} only"
    if other.slo_priced_usd <= 0:  # nothing to pay for at all (no requests)
        return f"as cheap as {name}"
    share = 1.0 - choice.slo_priced_usd / other.slo_priced_usd
    if share < 0.005:  # a percentage would read 0%: say the dollars
        return f"${other.slo_priced_usd - choice.slo_priced_usd:,.2f} below {name}"
    return f"{share:.0%} below {name}"


def render_verdict(v: Verdict) -> str:
    """The lines printed under the table."""
    slo = f"{v.slo_ttft_seconds:g} s"
    lines = [f"GPU, API or both? Each kind's best row, priced with every request later than {slo} at the API:"]
    width = max(len(p.name) for p in v.picks)
    priced = [f"${p.slo_priced_usd:,.2f}" for p in v.picks]
    spent = [f"${p.total_usd:,.2f}" for p in v.picks]
    pw, sw = max(map(len, priced)), max(map(len, spent))
    for p, a, b in zip(v.picks, priced, spent, strict=True):
        lines.append(
            f"  {p.kind:<4}  {p.name:<{width}}  {a:>{pw}} SLO-priced  ({b:>{sw}} spent, "
            f"{p.slo_attainment:.2%} within {slo})"
        )
    others = [p for p in v.picks if p is not v.choice]
    line = f"Choose {v.choice.kind} ({v.choice.name})"
    if others:
        line += ": " + ", ".join(_below(v.choice, p) for p in others)
    lines.append(line + ".")
    c = v.cheapest
    if c.name != v.choice.name and c.total_usd < v.choice.total_usd:
        lines.append(
            f"{c.name} spends less (${c.total_usd:,.2f} against ${v.choice.total_usd:,.2f}) "
            f"but serves {c.slo_attainment:.2%} within {slo} against {v.choice.slo_attainment:.2%}."
        )
    return "\n".join(lines)


def verdict_json(v: Verdict) -> dict[str, Any]:
    """The verdict for the JSON report: the kind chosen, its row, and each kind's row."""
    return {
        "choice": v.choice.kind,
        "policy": v.choice.name,
        "cheapest_in_dollars": v.cheapest.name,
        "kinds": {p.kind: p.name for p in v.picks},
    }
