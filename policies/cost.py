"""Token and GPU economics: API bills, effective cost per token, and break-even volumes."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ApiPrice", "api_cost_usd", "blended_usd_per_million", "breakeven_tokens", "usd_per_million_tokens"]


@dataclass(frozen=True, slots=True)
class ApiPrice:
    """An API's prices per 1M input and output tokens."""

    input_usd_per_million: float
    output_usd_per_million: float

    def __post_init__(self) -> None:
        if self.input_usd_per_million < 0 or self.output_usd_per_million < 0:
            raise ValueError("token prices must not be negative")


def api_cost_usd(input_tokens: float, output_tokens: float, price: ApiPrice) -> float:
    """What an API bills for these tokens."""
    return (input_tokens * price.input_usd_per_million + output_tokens * price.output_usd_per_million) / 1e6


def blended_usd_per_million(input_share: float, price: ApiPrice) -> float:
    """Price of 1M tokens of which `input_share` (0..1) are input tokens."""
    if not 0.0 <= input_share <= 1.0:
        raise ValueError(f"input share must be within 0..1, got {input_share}")
    return input_share * price.input_usd_per_million + (1.0 - input_share) * price.output_usd_per_million


def usd_per_million_tokens(total_usd: float, total_tokens: float) -> float:
    """Effective cost of 1M tokens; infinite when nothing was served."""
    return float("inf") if total_tokens <= 0 else total_usd / total_tokens * 1e6


def breakeven_tokens(fixed_usd: float, input_share: float, price: ApiPrice) -> float:
    """Token volume at which the API bill equals a fixed cost (e.g. one GPU for a month)."""
    blended = blended_usd_per_million(input_share, price)
    return float("inf") if blended <= 0 else fixed_usd / blended * 1e6
