"""The GPUPool spec: the one typed source of the CRD schema, the chart's defaults and the validator.

Every field has a default where a safe one exists and a description that the CRD and the docs reuse.
Field names are snake_case in Python and camelCase on the wire (YAML, the Kubernetes object).
"""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import holidays as holidays_lib
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from policies.cost import ApiPrice

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "PLURAL",
    "BilledPod",
    "Billing",
    "BillingGranularity",
    "Budget",
    "Condition",
    "Demand",
    "Fallback",
    "FallbackCapAction",
    "FallbackLedger",
    "FallbackTotal",
    "GPUCapAction",
    "GPUPool",
    "GPUPoolSpec",
    "GPUPoolStatus",
    "HolidayCalendar",
    "Holidays",
    "LastDecision",
    "Metrics",
    "MetricsSourceKind",
    "NextChange",
    "ObjectMeta",
    "Objective",
    "Override",
    "OverrideMode",
    "PoolLedger",
    "PrometheusQueries",
    "PrometheusSource",
    "Provider",
    "Schedule",
    "SecretRef",
    "Target",
    "Weekday",
    "Window",
    "parse_clock",
]

API_GROUP = "ebbtide.dev"
API_VERSION = "v1alpha1"
KIND = "GPUPool"
PLURAL = "gpupools"

_CLOCK = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$|^24:00$")
_DNS1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


@lru_cache(maxsize=4096)
def parse_clock(text: str) -> int:
    """Minutes after local midnight for an "HH:MM" wall-clock time ("24:00" is 1440, the end of the day)."""
    if not _CLOCK.match(text):
        raise ValueError(f"{text!r} is not a time of day in 24-hour HH:MM form (00:00 to 24:00)")
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


class _Model(BaseModel):
    """Strict wire model: camelCase aliases, unknown fields rejected, values frozen once validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


class Weekday(StrEnum):
    """Day of the week, as written in a window (`mon` … `sun`)."""

    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"

    @property
    def number(self) -> int:
        """Monday is 0, as in `datetime.weekday()`."""
        return _WEEKDAY_NUMBERS[self]


_WEEKDAY_NUMBERS = {day: number for number, day in enumerate(Weekday)}


class Target(_Model):
    """The vLLM Deployment this pool scales."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must be <= maxReplicas"}
            ]
        }
    )

    deployment: Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS1123)]
    """Name of the vLLM Deployment."""
    namespace: Annotated[str | None, Field(default=None, max_length=63, pattern=_DNS1123)] = None
    """Namespace of the Deployment; the pool's own namespace when empty."""
    min_replicas: Annotated[int, Field(ge=0)] = 0
    """Fewest replicas at any time, inside or outside windows. 0 allows scale to zero."""
    max_replicas: Annotated[int, Field(ge=0)] = 1
    """Most replicas at any time; windows may lower this but never raise it."""
    gpus_per_replica: Annotated[int, Field(ge=1)] = 1
    """GPUs each replica holds (tensor parallel size); billing multiplies by this."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    """Port the vLLM replicas serve on: the gateway sends requests there and the controller scrapes its
    /metrics (vLLM's default is 8000)."""
    served_model: Annotated[str | None, Field(min_length=1, max_length=256)] = None
    """Model name the vLLM replicas serve (their --served-model-name); the pool's first model when empty."""

    @model_validator(mode="after")
    def _min_le_max(self) -> Target:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas})")
        return self


class Window(_Model):
    """A recurring business-hours window in the schedule's timezone; `end` before `start` crosses midnight."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.start != self.end", "message": "a window's start must differ from its end"},
                {
                    "rule": "!has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must be <= maxReplicas",
                },
            ]
        }
    )

    name: Annotated[str, Field(min_length=1, max_length=63)] = "window"
    """Label used in decisions and events."""
    days: Annotated[list[Weekday], Field(min_length=1, max_length=7)]
    """Days on which the window opens (the day of its start, for windows crossing midnight)."""
    start: Annotated[str, Field(max_length=5, pattern=r"^(?:[01]\d|2[0-3]):[0-5]\d$")]
    """Local opening time, HH:MM (00:00 to 23:59)."""
    end: Annotated[str, Field(max_length=5, pattern=_CLOCK.pattern)]
    """Local closing time, HH:MM; earlier than start means the next day; 24:00 is midnight (00:00-24:00 is
    the whole day)."""
    min_replicas: Annotated[int, Field(ge=0)] = 1
    """Replicas kept Ready while the window is open (pre-warmed ahead of the opening)."""
    max_replicas: Annotated[int | None, Field(ge=0)] = None
    """Cap while the window is open; the pool's maxReplicas when empty."""

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        parse_clock(value)
        return value

    @field_validator("days")
    @classmethod
    def _unique_days(cls, value: list[Weekday]) -> list[Weekday]:
        if len(set(value)) != len(value):
            raise ValueError("days must not repeat a day")
        return value

    @model_validator(mode="after")
    def _shape(self) -> Window:
        if parse_clock(self.start) == parse_clock(self.end):
            raise ValueError(f"window {self.name!r}: start ({self.start}) must differ from end ({self.end})")
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(
                f"window {self.name!r}: minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas})"
            )
        return self

    @property
    def start_minute(self) -> int:
        """Opening time in minutes after local midnight."""
        return parse_clock(self.start)

    @property
    def length_minutes(self) -> int:
        """Length of the window in minutes (1..1439); crosses midnight when start + length > 1440."""
        return (parse_clock(self.end) - parse_clock(self.start)) % 1440 or 1440


class HolidayCalendar(_Model):
    """A public-holiday calendar from the `holidays` library: a country and optionally a region."""

    country: Annotated[str, Field(min_length=2, max_length=3)]
    """ISO 3166-1 country code, e.g. DE, US, BR."""
    subdivision: Annotated[str | None, Field(max_length=10)] = None
    """ISO 3166-2 subdivision within the country, e.g. BY for Bavaria, CA for California."""

    @model_validator(mode="after")
    def _known(self) -> HolidayCalendar:
        supported = holidays_lib.list_supported_countries()
        if self.country.upper() not in supported:
            raise ValueError(f"country {self.country!r} has no holiday calendar (use an ISO 3166-1 code)")
        subdivisions = supported[self.country.upper()]
        if self.subdivision is not None and self.subdivision not in subdivisions:
            raise ValueError(
                f"subdivision {self.subdivision!r} is not a region of {self.country.upper()} "
                f"(known: {', '.join(subdivisions[:12])}{'…' if len(subdivisions) > 12 else ''})"
            )
        return self


class Holidays(_Model):
    """Days on which no window opens."""

    dates: list[dt.date] = Field(default_factory=list, max_length=400)
    """Explicit dates (YYYY-MM-DD) in the schedule's timezone."""
    calendars: list[HolidayCalendar] = Field(default_factory=list, max_length=16)
    """Public-holiday calendars; every holiday in any of them closes the windows."""


class OverrideMode(StrEnum):
    """What a one-off override does while it is in force."""

    KEEP_WARM = "keepWarm"
    OFF = "off"


class Override(_Model):
    """A one-off instruction: keep the pool warm, or keep it off, until a moment."""

    mode: OverrideMode
    """keepWarm holds at least `replicas` Ready; off holds zero whatever the demand."""
    until: dt.datetime
    """End of the override (RFC 3339 with offset)."""
    start: dt.datetime | None = None
    """Start of the override; in force immediately when empty."""
    replicas: Annotated[int, Field(ge=1)] = 1
    """Replicas held by keepWarm (ignored by off)."""

    @field_validator("until", "start")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-12-24T18:00:00+01:00")
        return value

    @model_validator(mode="after")
    def _order(self) -> Override:
        if self.start is not None and self.start >= self.until:
            raise ValueError(f"start ({self.start.isoformat()}) must be before until ({self.until.isoformat()})")
        return self


class Schedule(_Model):
    """Business-hour windows with their timezone, holidays and one-off overrides."""

    timezone: str = "UTC"
    """IANA timezone of the windows and holiday dates, e.g. Europe/Berlin."""
    windows: list[Window] = Field(default_factory=list, max_length=32)
    """Recurring windows; outside all of them the pool may scale to zero."""
    holidays: Holidays = Field(default_factory=Holidays)
    """Days on which the windows stay closed."""
    overrides: list[Override] = Field(default_factory=list, max_length=32)
    """One-off overrides; `off` wins over `keepWarm` when both are in force."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value not in _zone_names():
            raise ValueError(f"unknown timezone {value!r} (use an IANA name such as Europe/Berlin)")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:  # pragma: no cover - listed but unloadable
            raise ValueError(f"timezone {value!r} cannot be loaded: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _no_conflicting_overlaps(self) -> Schedule:
        problems = _conflicting_overlaps(self.windows)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's timezone."""
        return ZoneInfo(self.timezone)


class Demand(_Model):
    """How queue depth turns into replicas."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # replicaTokensPerSecond has a default, so it is always there to compare with.
                    "rule": "!has(self.replicaMeanTokensPerSecond)"
                    " || self.replicaMeanTokensPerSecond <= self.replicaTokensPerSecond",
                    "message": "replicaMeanTokensPerSecond must be <= replicaTokensPerSecond",
                },
                {
                    "rule": "has(self.replicaPrefillTokensPerSecond) == has(self.replicaDecodeTokensPerSecond)",
                    "message": "replicaPrefillTokensPerSecond and replicaDecodeTokensPerSecond go together",
                },
            ]
        }
    )

    target_queue_per_replica: Annotated[float, Field(gt=0)] = 8.0
    """Requests (vLLM num_requests_waiting + num_requests_running) one replica should carry."""
    target_kv_cache_usage: Annotated[float | None, Field(gt=0, le=1)] = None
    """Optional KV-cache utilisation target (0-1]; scale up when the average exceeds it."""
    max_scale_up_step: Annotated[int, Field(ge=1)] = 4
    """Most replicas added in one decision (mirrors the HPA's default of 4 pods per period)."""
    scale_down_delay_seconds: Annotated[int, Field(ge=0)] = 300
    """A scale-down waits until the demand has stayed low this long (HPA stabilisation window: 300 s)."""
    idle_grace_seconds: Annotated[int, Field(ge=0)] = 600
    """Outside windows, the pool goes to zero only after this long with an empty queue."""
    replay: bool = True
    """Replay the last hour's requests (as the gateway reports them) through every replica count and keep
    at least the count that would have cost least (`policies.replay`; needs the gateway). false: the
    other rules alone, which keep fewer replicas for bursts when late requests are acceptable."""
    overflow_memory_seconds: Annotated[int, Field(ge=0)] = 1800
    """After the gateway overflowed with every replica Ready, the pool keeps at least that many replicas
    this long, so replicas added for bursts are not released between bursts."""
    rate_smoothing_seconds: Annotated[int, Field(ge=0)] = 300
    """Time constant of the moving average applied to token rates before they are priced (0: none), so
    one burst does not start a GPU that would be Ready only after the burst."""
    metric_max_age_seconds: Annotated[int, Field(ge=1)] = 90
    """A metric sample older than this is stale: replicas are held, never scaled down on it."""
    replica_tokens_per_second: Annotated[float, Field(gt=0)] = 6000.0
    """Tokens (prompt + generated) one replica should serve per second: its measured maximum times the
    utilisation you target (an 8B model on one H100 sustains roughly 8-10k at a 3:1 prompt mix).
    Turns the offered token rate into replicas and prices what each replica absorbs."""
    replica_mean_tokens_per_second: Annotated[float | None, Field(gt=0)] = None
    """Optional: keep one replica per this many tokens per second of the last hour's mean offered rate
    (prompt + generated), as long as each pays for itself against the fallback, while the load is bursty
    (the gateway sent at least 2% of the hour's tokens to the fallback with a replica Ready). Set well
    below replicaTokensPerSecond: the headroom serves the bursts a mean hides, which a replica started
    when they show would meet only after its cold start. Empty: replicas follow the current rate only."""

    replica_prefill_tokens_per_second: Annotated[float | None, Field(gt=0)] = None
    """Optional, with replicaDecodeTokensPerSecond: prompt tokens one replica prefills per second when
    it does nothing else (an 8B model on one H100: roughly 10-20k). With both, the gateway estimates a
    request's work as its prompt over this plus its expected output over the decode rate, and its own
    prefill as its prompt over this, the simulator's replica model; without them, as prompt plus output
    over replicaTokensPerSecond, a blend that overstates a prompt-heavy request's work."""
    replica_decode_tokens_per_second: Annotated[float | None, Field(gt=0)] = None
    """Optional, with replicaPrefillTokensPerSecond: tokens one replica generates per second over its
    whole running batch, at saturation (an 8B model on one H100: roughly 2.5-5k)."""

    def work_tokens(self, prompt_tokens: float, output_tokens: float) -> float:
        """A request's work in tokens at replicaTokensPerSecond: with the split speeds, its replica-seconds
        (prompt over prefill, output over decode) times that rate; without them, prompt plus output."""
        prefill, decode = self.replica_prefill_tokens_per_second, self.replica_decode_tokens_per_second
        if prefill is None or decode is None:
            return prompt_tokens + output_tokens
        return (prompt_tokens / prefill + output_tokens / decode) * self.replica_tokens_per_second

    def prefill_seconds(self, prompt_tokens: float) -> float:
        """How long a replica takes to prefill a prompt: at the prefill speed, else the blended rate."""
        return prompt_tokens / (self.replica_prefill_tokens_per_second or self.replica_tokens_per_second)

    @model_validator(mode="after")
    def _speeds_together(self) -> Demand:
        if (self.replica_prefill_tokens_per_second is None) != (self.replica_decode_tokens_per_second is None):
            raise ValueError(
                "replicaPrefillTokensPerSecond and replicaDecodeTokensPerSecond go together: set both or neither"
            )
        return self

    @model_validator(mode="after")
    def _mean_within_capacity(self) -> Demand:
        mean = self.replica_mean_tokens_per_second
        if mean is not None and mean > self.replica_tokens_per_second:
            raise ValueError(
                f"replicaMeanTokensPerSecond ({mean:g}) must be <= replicaTokensPerSecond "
                f"({self.replica_tokens_per_second:g}): it sizes for the hour's mean with headroom for bursts"
            )
        return self


class BillingGranularity(StrEnum):
    """The unit a provider rounds GPU time up to."""

    SECOND = "second"
    MINUTE = "minute"
    HOUR = "hour"

    @property
    def seconds(self) -> int:
        """Length of one billing unit in seconds."""
        return {"second": 1, "minute": 60, "hour": 3600}[self.value]


class Billing(_Model):
    """How the GPU provider bills."""

    gpu_hourly_usd: Annotated[float, Field(ge=0)] = 1.6438
    """Price of one GPU for one hour (default: the seed's H100 at $1,200 per 730-hour month)."""
    granularity: BillingGranularity = BillingGranularity.SECOND
    """Each replica's running time is rounded up to this unit."""
    minimum_billed_seconds: Annotated[int, Field(ge=0)] = 60
    """Shortest time billed for one replica start."""
    release_margin_seconds: Annotated[int, Field(ge=0)] = 120
    """With coarse billing, a replica whose paid period has more than this left is kept (at least 15 s is
    used: one control tick, so a margin of 0 cannot hold a replica into period after period)."""


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


class MetricsSourceKind(StrEnum):
    """Where the controller reads the engines' queue from."""

    PODS = "pods"
    """Scrape /metrics of the target Deployment's Ready pods at their IPs (target.port)."""
    PROMETHEUS = "prometheus"
    """Ask a Prometheus server's HTTP API with the queries below."""


class PrometheusQueries(_Model):
    """PromQL for each signal; `$namespace`, `$deployment` and `$pool` are replaced before the query runs.

    Each query but `pods` must return one series (or an empty vector, which is no data). The token
    queries return rates in tokens per second. `pods` names the pods behind the sums: a Ready pod
    missing from it makes the read no data, as a pod the `pods` source cannot scrape does.
    """

    waiting: Annotated[str, Field(min_length=1, max_length=4096)] = (
        'sum(vllm:num_requests_waiting{namespace="$namespace",pod=~"$deployment-.*"})'
    )
    """Requests queued on the engines."""
    running: Annotated[str, Field(min_length=1, max_length=4096)] = (
        'sum(vllm:num_requests_running{namespace="$namespace",pod=~"$deployment-.*"})'
    )
    """Requests in the engines' running batches."""
    kv_cache_usage: Annotated[str | None, Field(max_length=4096)] = (
        'avg(vllm:kv_cache_usage_perc{namespace="$namespace",pod=~"$deployment-.*"})'
    )
    """Mean KV-cache use, 0..1 (optional)."""
    prompt_tokens_per_second: Annotated[str | None, Field(max_length=4096)] = (
        'sum(rate(vllm:prompt_tokens_total{namespace="$namespace",pod=~"$deployment-.*"}[1m]))'
    )
    """Prompt tokens per second served by the engines (optional)."""
    generation_tokens_per_second: Annotated[str | None, Field(max_length=4096)] = (
        'sum(rate(vllm:generation_tokens_total{namespace="$namespace",pod=~"$deployment-.*"}[1m]))'
    )
    """Generated tokens per second (optional)."""
    pods: Annotated[str | None, Field(max_length=4096)] = (
        'count by (pod) (vllm:num_requests_waiting{namespace="$namespace",pod=~"$deployment-.*"})'
    )
    """One series per pod the server has fresh samples of, its name in the `pod` label (optional, but
    without it a Ready pod that stopped being scraped silently leaves the sums: a smaller queue)."""


class PrometheusSource(_Model):
    """A Prometheus server to read the engines' metrics from."""

    url: Annotated[str, Field(max_length=2048, pattern=r"^https?://")]
    """Base URL of the Prometheus server, e.g. http://prometheus.monitoring:9090."""
    bearer_token_secret_ref: SecretRef | None = None
    """Secret (in the pool's namespace) holding a bearer token for the server, if it needs one."""
    queries: PrometheusQueries = Field(default_factory=PrometheusQueries)
    """The PromQL behind each signal."""


class Metrics(_Model):
    """Where demand is read from."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.source) || self.source != 'prometheus' || has(self.prometheus)",
                    "message": "source prometheus needs the prometheus section (its url)",
                }
            ]
        }
    )

    source: MetricsSourceKind = MetricsSourceKind.PODS
    """pods scrapes the replicas directly; prometheus asks a Prometheus server."""
    path: Annotated[str, Field(max_length=256, pattern=r"^/")] = "/metrics"
    """Path of vLLM's metrics on each replica (source pods)."""
    scrape_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 2.0
    """Budget of one read (one pod, or one query); a slower one is no data, it never stalls other pools."""
    prometheus: PrometheusSource | None = None
    """The Prometheus server (source prometheus)."""
    gateway: bool = True
    """Add the gateway's counters (requests held or sent to the fallback, offered tokens) to the demand,
    when the controller knows where the gateway runs."""

    @model_validator(mode="after")
    def _prometheus_given(self) -> Metrics:
        if self.source is MetricsSourceKind.PROMETHEUS and self.prometheus is None:
            raise ValueError("source prometheus needs the prometheus section (its url)")
        return self


class Objective(_Model):
    """The latency the pool aims for, and how the gateway keeps it under load."""

    ttft_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """Time to first token the pool aims for (the simulator's SLO by default)."""
    defer_late_requests: bool = True
    """Queue requests that would miss the objective behind those that can still make it, with vLLM's
    request priority (the engine must run with --scheduling-policy priority); false keeps one FIFO."""


class GPUCapAction(StrEnum):
    """What the pool does when today's GPU-hours reach the cap."""

    SCALE_TO_ZERO = "scaleToZero"
    HOLD = "hold"


class FallbackCapAction(StrEnum):
    """What the gateway does when today's fallback spend reaches the cap."""

    QUEUE = "queue"
    REJECT = "reject"


class Budget(_Model):
    """Daily caps, counted per day in the schedule's timezone."""

    max_gpu_hours_per_day: Annotated[float | None, Field(gt=0)] = None
    """GPU-hours (replicas x GPUs x billed hours) allowed per day; no cap when empty."""
    max_fallback_usd_per_day: Annotated[float | None, Field(gt=0)] = None
    """Fallback spend allowed per day; no cap when empty."""
    on_gpu_cap: GPUCapAction = GPUCapAction.SCALE_TO_ZERO
    """scaleToZero sends everything to the fallback; hold allows no scale-up but keeps what runs."""
    on_fallback_cap: FallbackCapAction = FallbackCapAction.QUEUE
    """queue keeps requests on the GPUs (which may then grow past the cost rule); reject answers 429."""


class GPUPoolSpec(_Model):
    """Desired behaviour of one pool of vLLM replicas."""

    target: Target
    """The Deployment to scale and its limits."""
    models: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list, max_length=32)
    """Model names clients send for this pool; the gateway routes requests by them (each name belongs to
    one pool)."""
    metrics: Metrics = Field(default_factory=Metrics)
    """Where demand is read from."""
    schedule: Schedule = Field(default_factory=Schedule)
    """Business-hour windows, holidays and overrides."""
    demand: Demand = Field(default_factory=Demand)
    """Queue-depth scaling."""
    cold_start_seconds: Annotated[int, Field(ge=0, le=7200)] = 180
    """Expected seconds from scale-up to Ready (image pull, weights load, CUDA graphs)."""
    billing: Billing = Field(default_factory=Billing)
    """GPU pricing and billing granularity."""
    fallback: Fallback = Field(default_factory=Fallback)
    """The paid API for overflow."""
    budget: Budget = Field(default_factory=Budget)
    """Daily caps."""
    objective: Objective = Field(default_factory=Objective)
    """The latency objective and late-request handling."""

    @property
    def replica_usd_per_hour(self) -> float:
        """What one replica costs per hour: the GPU's price times the GPUs it holds."""
        return self.billing.gpu_hourly_usd * self.target.gpus_per_replica

    @property
    def served_model(self) -> str | None:
        """The model name to send to the vLLM replicas (target.servedModel, else the first model)."""
        return self.target.served_model or (self.models[0] if self.models else None)

    @model_validator(mode="after")
    def _unique_models(self) -> GPUPoolSpec:
        repeated = sorted({m for m in self.models if self.models.count(m) > 1})
        if repeated:
            raise ValueError(f"models must not repeat a name (repeated: {', '.join(repeated)})")
        return self

    @model_validator(mode="after")
    def _windows_within_pool(self) -> GPUPoolSpec:
        for window in self.schedule.windows:
            if window.min_replicas > self.target.max_replicas:
                raise ValueError(
                    f"window {window.name!r}: minReplicas ({window.min_replicas}) exceeds the pool's "
                    f"maxReplicas ({self.target.max_replicas})"
                )
        return self


class ObjectMeta(_Model):
    """The part of Kubernetes object metadata a pool needs."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS1123)]
    """Pool name."""
    namespace: Annotated[str, Field(max_length=63, pattern=_DNS1123)] = "default"
    """Pool namespace."""


class GPUPool(_Model):
    """A GPUPool object as written in YAML or read from the cluster."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["ebbtide.dev/v1alpha1"] = Field(alias="apiVersion")
    """Must be ebbtide.dev/v1alpha1."""
    kind: Literal["GPUPool"]
    """Must be GPUPool."""
    metadata: ObjectMeta
    """Name and namespace."""
    spec: GPUPoolSpec
    """The pool's desired behaviour."""

    @property
    def deployment_namespace(self) -> str:
        """Namespace of the scaled Deployment."""
        return self.spec.target.namespace or self.metadata.namespace


class LastDecision(_Model):
    """The most recent decision, as shown in the pool's status."""

    model_config = ConfigDict(extra="ignore")

    reason: Annotated[str, Field(max_length=64)]
    """Machine-readable reason (queue-high, prewarm, billing-hold, no-data-hold, read-error, …)."""
    message: Annotated[str, Field(max_length=4096)]
    """One-line explanation."""
    valid: bool
    """False when the decision only held replicas for lack of data."""
    desired_replicas: Annotated[int | None, Field(ge=0)] = None
    """Replicas the decision asked for; empty when the step could not read the cluster."""
    time: dt.datetime
    """When this reason was first given (it moves only when the reason changes)."""


_CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(_Model):
    """One aspect of the pool's state, in the shape of Kubernetes' metav1.Condition."""

    model_config = ConfigDict(extra="ignore")

    type: Annotated[str, Field(min_length=1, max_length=316)]
    """Ready, MetricsAvailable, ScalingActive or BudgetExceeded."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    """The spec generation the condition was set for."""
    last_transition_time: dt.datetime
    """When the status last flipped (not when the condition was last written)."""
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=_CONDITION_REASON)]
    """CamelCase reason for the status."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""


class NextChange(_Model):
    """The next moment the schedule changes what the pool may run."""

    model_config = ConfigDict(extra="ignore")

    time: dt.datetime
    """When it happens."""
    what: Annotated[str, Field(max_length=256)]
    """What happens then (prewarm for a window, a window opens or closes, an override ends)."""


class FallbackTotal(_Model):
    """One gateway instance's FALLBACK_USD counter total when last counted."""

    model_config = ConfigDict(extra="ignore")

    instance: Annotated[str, Field(max_length=512)]
    """The gateway replica (its metrics URL); empty for a single summed total."""
    total: Annotated[float, Field(ge=0)]
    """Dollars the counter showed."""


class FallbackLedger(_Model):
    """Fallback spend counted today and the gateway counter totals it was counted up to."""

    model_config = ConfigDict(extra="ignore")

    day: dt.date
    """The local day (pool's timezone) the spend belongs to."""
    usd: Annotated[float, Field(ge=0)] = 0.0
    """Dollars counted so far that day."""
    totals: list[FallbackTotal] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["instance"]},
    )
    """Each gateway instance's counter total when last counted."""


class BilledPod(_Model):
    """A pod billed now, and since when today."""

    model_config = ConfigDict(extra="ignore")

    uid: Annotated[str, Field(min_length=1, max_length=128)]
    """The pod's uid."""
    since: dt.datetime
    """Start of its billed time today (its billing start, or local midnight if earlier)."""


class PoolLedger(_Model):
    """What today's GPU-hours were counted from, so a restarted controller goes on counting.

    Lists rather than maps: a JSON merge patch replaces a list whole but merges a map, which would keep a
    pod that went."""

    model_config = ConfigDict(extra="ignore")

    day: dt.date | None = None
    """The local day (pool's timezone) the counts belong to."""
    closed_gpu_seconds: Annotated[float | None, Field(ge=0)] = None
    """GPU-seconds of today's pods that are gone."""
    pods: list[BilledPod] = Field(
        default_factory=list,
        max_length=4096,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"]},
    )
    """The pods billed now."""
    fallback: FallbackLedger | None = None
    """Today's fallback spend."""


class GPUPoolStatus(_Model):
    """Observed state of a pool, written by the controller."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    """The spec generation the controller last acted on."""
    current_replicas: int | None = None
    """The Deployment's replicas as last seen."""
    ready_replicas: int | None = None
    """Ready replicas as last seen."""
    desired_replicas: int | None = None
    """What the last decision asked for."""
    active_window: Annotated[str | None, Field(max_length=63)] = None
    """The schedule window open now; empty outside windows."""
    next_change: NextChange | None = None
    """The schedule's next boundary."""
    last_decision: LastDecision | None = None
    """The last decision and its reason."""
    last_scale_time: dt.datetime | None = None
    """When the controller last changed the replicas."""
    gpu_hours_today: float | None = None
    """Billed GPU-hours of the current local day; empty when unknown."""
    fallback_usd_today: float | None = None
    """Fallback spend of the current local day; empty when unknown."""
    fallback_open: bool | None = None
    """False once today's fallback spend reached budget.maxFallbackUsdPerDay (or cannot be checked while a
    cap is set): the gateway then stops sending requests to the fallback. Empty means open."""
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready, MetricsAvailable, ScalingActive and BudgetExceeded."""
    policy_state: Annotated[str | None, Field(max_length=65536)] = None
    """The policy's memory (idle grace, burst memory, scale-down delay), versioned JSON, so a restart keeps it."""
    ledger: PoolLedger | None = None
    """What today's usage was counted from (restart-safe, nothing in local files)."""


_ZONES: frozenset[str] | None = None


def _zone_names() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    return _ZONES


def _week_intervals(window: Window) -> list[tuple[int, int]]:
    """Minute-of-week intervals [start, end) the window covers, split at the week's end."""
    out: list[tuple[int, int]] = []
    for day in window.days:
        start = day.number * 1440 + window.start_minute
        end = start + window.length_minutes
        if end <= 7 * 1440:
            out.append((start, end))
        else:
            out.append((start, 7 * 1440))
            out.append((0, end - 7 * 1440))
    return out


def _conflicting_overlaps(windows: list[Window]) -> list[str]:
    """Pairs of windows that overlap in the week with different replica limits (ambiguous intent)."""
    problems: list[str] = []
    for i, first in enumerate(windows):
        for j in range(i + 1, len(windows)):
            second = windows[j]
            if (first.min_replicas, first.max_replicas) == (second.min_replicas, second.max_replicas):
                continue
            overlap = any(
                a0 < b1 and b0 < a1 for a0, a1 in _week_intervals(first) for b0, b1 in _week_intervals(second)
            )
            if overlap:
                problems.append(
                    f"windows[{i}] ({first.name!r}) and windows[{j}] ({second.name!r}) overlap with "
                    f"different replica limits"
                )
    return problems
