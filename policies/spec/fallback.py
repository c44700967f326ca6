"""The fallback: the paid APIs that take what the GPUs cannot serve in time, tried in order."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from policies.cost import ApiPrice
from policies.spec.base import _DNS1123, _Model

__all__ = ["Fallback", "Provider", "SecretRef"]


class SecretRef(_Model):
    """A key in a Kubernetes Secret."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS1123)]
    """Secret name."""
    key: Annotated[str, Field(min_length=1, max_length=253)] = "api-key"
    """Key within the Secret."""


_DEFAULT_INPUT_USD_PER_MILLION = 3.0
_DEFAULT_OUTPUT_USD_PER_MILLION = 15.0

# Fields of the single-provider fallback before `providers` existed; named in the migration message.
_LEGACY_FALLBACK_FIELDS = ("baseUrl", "model", "apiKeySecretRef", "inputUsdPerMillion", "outputUsdPerMillion")


class Provider(_Model):
    """One paid OpenAI-compatible API the gateway may send requests to, with its prices and timeouts."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.apiKeySecretRef) ? 1 : 0) + (has(self.apiKeyEnv) ? 1 : 0)"
                    " + (has(self.apiKeyFile) ? 1 : 0) <= 1",
                    "message": "give at most one of apiKeySecretRef, apiKeyEnv, apiKeyFile",
                }
            ]
        }
    )

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS1123)]
    """Short name used in metrics, logs and the pool's status (e.g. openai, mid-tier)."""
    base_url: Annotated[str, Field(max_length=2048, pattern=r"^https?://")]
    """Base URL of the OpenAI-compatible API, e.g. https://api.openai.com/v1."""
    model: Annotated[str | None, Field(min_length=1, max_length=256)] = None
    """Model name sent to this provider; the request's own when empty."""
    api_key_secret_ref: SecretRef | None = None
    """Secret (in the pool's namespace) holding the provider's API key."""
    api_key_env: Annotated[str | None, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = None
    """Environment variable holding the API key (for a gateway run without a cluster)."""
    api_key_file: Annotated[str | None, Field(min_length=1, max_length=4096)] = None
    """File holding the API key (for a gateway run without a cluster, or a mounted Secret)."""
    input_usd_per_million: Annotated[float, Field(ge=0)] = _DEFAULT_INPUT_USD_PER_MILLION
    """Price of 1M prompt tokens (default: the seed's mid-tier reference)."""
    output_usd_per_million: Annotated[float, Field(ge=0)] = _DEFAULT_OUTPUT_USD_PER_MILLION
    """Price of 1M generated tokens (default: the seed's mid-tier reference)."""
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 2.0
    """Longest wait for a TCP and TLS connection before trying the next provider."""
    first_byte_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Longest wait for the response's status (streaming: its first event) before trying the next provider."""
    total_timeout_seconds: Annotated[float, Field(gt=0, le=7200)] = 600.0
    """Longest a whole request to this provider may take."""

    @model_validator(mode="after")
    def _one_key_source(self) -> Provider:
        sources = (
            ("apiKeySecretRef", self.api_key_secret_ref),
            ("apiKeyEnv", self.api_key_env),
            ("apiKeyFile", self.api_key_file),
        )
        given = [name for name, value in sources if value is not None]
        if len(given) > 1:
            raise ValueError(f"provider {self.name!r}: give at most one of {', '.join(given)}")
        return self


class Fallback(_Model):
    """The paid OpenAI-compatible APIs that take requests the GPUs cannot serve in time, tried in order."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.providers)"
                    " || self.providers.all(p, self.providers.exists_one(q, q.name == p.name))",
                    "message": "provider names must be unique",
                }
            ]
        }
    )

    providers: list[Provider] = Field(default_factory=list, max_length=8)
    """Providers in order of preference: the next is tried when one fails (connect error, timeout, 408,
    429, 5xx). The first one's prices are what the scaling policy weighs GPUs against. Empty disables
    overflow: requests queue on the GPUs."""
    max_queue_wait_seconds: Annotated[float, Field(ge=0)] = 2.0
    """Longest expected queue wait on the GPUs before a request overflows to the fallback."""
    take_late_requests: bool = True
    """A request that would miss `objective.ttftSeconds` on the GPUs (its wait plus its own prefill) goes to the
    fallback while it is open, even within `maxQueueWaitSeconds` (within it, counted as saturation only in a
    pool without `demand.replay` and only when more replicas could serve it on time); false serves it late on
    the GPUs (in the late lane with `deferLateRequests`) while its wait is within `maxQueueWaitSeconds`."""

    @model_validator(mode="before")
    @classmethod
    def _single_provider_moved(cls, data: object) -> object:
        if isinstance(data, dict):
            legacy = [k for k in _LEGACY_FALLBACK_FIELDS if k in data or _snake(k) in data]
            if legacy:
                raise ValueError(
                    f"{', '.join(legacy)} moved into a provider: write fallback.providers: "
                    f"[{{name: ..., {', '.join(f'{k}: ...' for k in legacy)}}}] (a list, tried in order)"
                )
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> Fallback:
        names = [p.name for p in self.providers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"provider names must be unique (repeated: {', '.join(repeated)})")
        return self

    @property
    def base_url(self) -> str | None:
        """The first provider's base URL; None when the pool has no fallback."""
        return self.providers[0].base_url if self.providers else None

    @property
    def input_usd_per_million(self) -> float:
        """The first provider's input price (the seed's mid-tier reference without one)."""
        return self.providers[0].input_usd_per_million if self.providers else _DEFAULT_INPUT_USD_PER_MILLION

    @property
    def output_usd_per_million(self) -> float:
        """The first provider's output price (the seed's mid-tier reference without one)."""
        return self.providers[0].output_usd_per_million if self.providers else _DEFAULT_OUTPUT_USD_PER_MILLION

    @property
    def price(self) -> ApiPrice:
        """The first provider's prices, as the cost model takes them."""
        return ApiPrice(self.input_usd_per_million, self.output_usd_per_million)


def _snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)
