"""`ebbtide breakeven`: API per-token bills against one GPU billed per hour, as in the seed example.

Defaults reproduce the example this project grew from: 300M input + 100M output tokens a month, reference
API prices (frontier $15/$75, mid-tier $3/$15, lightweight $1/$5 per 1M tokens) and one H100 24/7 at about
$1,200 a month (730 hours).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from policies.cost import ApiPrice, api_cost_usd, blended_usd_per_million, breakeven_tokens

__all__ = ["DEFAULT_TIERS", "BreakevenRow", "breakeven_rows", "parse_tier", "parse_tokens", "register", "render"]

DEFAULT_TIERS: tuple[tuple[str, ApiPrice], ...] = (
    ("frontier", ApiPrice(15.0, 75.0)),
    ("mid-tier", ApiPrice(3.0, 15.0)),
    ("lightweight", ApiPrice(1.0, 5.0)),
)

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_TOKENS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)


def parse_tokens(text: str) -> float:
    """'300M' → 3e8; also k, B (or G) and T suffixes and plain numbers."""
    match = _TOKENS.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count (examples: 300M, 1.5B, 250000)")
    return float(match.group(1)) * _SUFFIX[match.group(2).lower()]


def parse_tier(text: str) -> tuple[str, ApiPrice]:
    """'name=IN/OUT' → a named API price per 1M tokens."""
    match = re.match(r"^\s*([^=]+?)\s*=\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=INPUT/OUTPUT in $ per 1M tokens (e.g. mid=3/15)")
    return match.group(1), ApiPrice(float(match.group(2)), float(match.group(3)))


def _tokens(value: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:,.3g}{unit}" if value / size < 1000 else f"{value / size:,.0f}{unit}"
    return f"{value:,.0f}"


def _usd(value: float) -> str:
    return f"${value:,.0f}" if value >= 100 else f"${value:,.2f}"


@dataclass(frozen=True, slots=True)
class BreakevenRow:
    """One API tier against one GPU."""

    name: str
    price: ApiPrice
    monthly_usd: float
    blended_usd_per_million: float
    breakeven_tokens: float


def breakeven_rows(
    input_tokens: float, output_tokens: float, gpu_monthly_usd: float, tiers: tuple[tuple[str, ApiPrice], ...]
) -> list[BreakevenRow]:
    """Per tier: this volume's monthly API bill and the volume (same input share) where one GPU is cheaper."""
    total = input_tokens + output_tokens
    if total <= 0:
        raise ValueError("the monthly volume must be above zero tokens")
    share = input_tokens / total
    return [
        BreakevenRow(
            name,
            price,
            api_cost_usd(input_tokens, output_tokens, price),
            blended_usd_per_million(share, price),
            breakeven_tokens(gpu_monthly_usd, share, price),
        )
        for name, price in tiers
    ]


def render(args: argparse.Namespace) -> str:
    """The comparison and break-even tables as text."""
    tiers: tuple[tuple[str, ApiPrice], ...] = tuple(args.tier) if args.tier else DEFAULT_TIERS
    gpu_monthly = args.gpu_hourly_usd * args.hours_per_month if args.gpu_hourly_usd else args.gpu_monthly_usd
    rows = breakeven_rows(args.input_tokens, args.output_tokens, gpu_monthly, tiers)
    total = args.input_tokens + args.output_tokens
    capacity = args.gpu_tokens_per_second * 3600 * args.hours_per_month if args.gpu_tokens_per_second else None

    lines = [
        f"Monthly volume: {_tokens(args.input_tokens)} input + {_tokens(args.output_tokens)} output "
        f"= {_tokens(total)} tokens",
        "",
    ]
    head = f"Scenario ({_tokens(total)} tok/month)"
    table = []
    for row in rows:
        label = f"API — {row.name} (${row.price.input_usd_per_million:g}/${row.price.output_usd_per_million:g} per 1M)"
        table.append((label, _usd(row.monthly_usd), ""))
    spare = ""
    if capacity is not None:
        spare = (
            f"fits {capacity / total:.1f}× the volume"
            if capacity >= total
            else (f"saturated: serves {capacity / total:.0%} of the volume")
        )
    table.append(
        (
            f"{args.gpu_name} self-hosted 24/7 "
            f"({args.hours_per_month:g} h at ${gpu_monthly / args.hours_per_month:.2f}/h)",
            _usd(gpu_monthly),
            spare,
        )
    )
    width = max(len(head), *(len(r[0]) for r in table))
    lines.append(f"{head:<{width}}  {'Monthly cost':>12}  Spare capacity")
    lines += [f"{a:<{width}}  {b:>12}  {c}".rstrip() for a, b, c in table]

    lines += [
        "",
        f"Break-even: monthly volume (at this {args.input_tokens / total:.0%} input mix) above which one "
        f"{args.gpu_name} 24/7 ({_usd(gpu_monthly)}/month) costs less than each API tier",
    ]
    cols = ("Tier", "Blended $/1M", "Break-even tokens/month", "One GPU's capacity/month")
    lines.append(f"{cols[0]:<14}{cols[1]:>14}  {cols[2]:>24}  {cols[3] if capacity is not None else ''}".rstrip())
    for row in rows:
        verdict = ""
        if capacity is not None:
            verdict = (
                f"{_tokens(capacity)}: one GPU beats it from {_tokens(row.breakeven_tokens)}"
                if row.breakeven_tokens <= capacity
                else f"{_tokens(capacity)}: never with one GPU (it saturates first)"
            )
        lines.append(
            f"{row.name:<14}{'$' + format(row.blended_usd_per_million, ',.2f'):>14}  "
            f"{_tokens(row.breakeven_tokens):>24}  {verdict}".rstrip()
        )
    if capacity is None:
        lines.append("(give --gpu-tokens-per-second to check each break-even against one GPU's capacity)")
    return "\n".join(lines)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
    return value


def run(args: argparse.Namespace) -> int:
    """Print the tables."""
    if args.input_tokens + args.output_tokens <= 0:
        print("ebbtide breakeven: --input-tokens and --output-tokens add up to zero; give a monthly volume")
        return 2
    print(render(args))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `breakeven` subcommand."""
    p = subparsers.add_parser(
        "breakeven",
        help="API per-token bill vs one GPU per hour, and the volume where the GPU wins",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--input-tokens", type=parse_tokens, default=300e6, help="input tokens per month (default 300M)")
    p.add_argument("--output-tokens", type=parse_tokens, default=100e6, help="output tokens per month (default 100M)")
    p.add_argument("--gpu-monthly-usd", type=_positive, default=1200.0, help="one GPU 24/7 for a month (default 1200)")
    p.add_argument(
        "--gpu-hourly-usd", type=_positive, default=None, help="or: one GPU-hour (overrides the monthly price)"
    )
    p.add_argument("--hours-per-month", type=_positive, default=730.0, help="hours in a billing month (default 730)")
    p.add_argument("--gpu-name", default="H100", help="label for the GPU row (default H100)")
    p.add_argument(
        "--gpu-tokens-per-second",
        type=_positive,
        default=None,
        help="one GPU's sustained throughput (prompt + generated tokens/s) to check capacity",
    )
    p.add_argument(
        "--tier",
        type=parse_tier,
        action="append",
        default=None,
        metavar="NAME=IN/OUT",
        help="API tier with $ per 1M input/output tokens; repeat; default: the three reference tiers",
    )
    p.set_defaults(func=run)
