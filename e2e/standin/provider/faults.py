"""What the stand-in provider is told (its config, the faults to inject) and what it
records about each request."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from multidict import CIMultiDictProxy

__all__ = ["VLLM_ONLY_FIELDS", "Fault", "FaultKind", "ProviderConfig", "RecordedRequest"]

# Request fields vLLM accepts and OpenAI does not; a provider told to reject them proves
# the gateway stripped them.
VLLM_ONLY_FIELDS = frozenset(
    {"priority", "top_k", "min_p", "repetition_penalty", "guided_json", "guided_regex", "guided_choice",
     "use_beam_search", "min_tokens", "skip_special_tokens", "ignore_eos", "request_id"}
)  # fmt: skip

FaultKind = Literal["status", "drop", "delay", "fail_before_content", "fail_after_content", "no_usage", "slow"]
# Faults that cut the connection on purpose: a request cut this way was not aborted by its client.
CUTS: frozenset[FaultKind] = frozenset({"drop", "fail_before_content", "fail_after_content"})


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """How the stand-in provider answers when no fault applies."""

    models: frozenset[str] = frozenset({"paid-model"})
    """Model names it serves (``/v1/models`` lists them); any other is 404. Empty: accept any."""
    api_key: str | None = None
    """When set, requests must carry ``Authorization: Bearer <api_key>``, else 401."""
    output_tokens: int = 8
    """Tokens a completion produces (capped by ``max_tokens``/``max_completion_tokens``)."""
    token_interval: float = 0.0
    """Seconds between two streamed tokens."""
    first_byte_delay: float = 0.0
    """Seconds before the response starts."""
    rejected_fields: frozenset[str] = frozenset()
    """Body fields answered with 400 (OpenAI's "Unrecognized request argument"), e.g. VLLM_ONLY_FIELDS."""

    def __post_init__(self) -> None:
        if self.output_tokens < 0:
            raise ValueError("output_tokens must be >= 0")
        if self.token_interval < 0 or self.first_byte_delay < 0:
            raise ValueError("token_interval and first_byte_delay must be >= 0")


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure; build it with the class methods."""

    kind: FaultKind
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0
    in_band: bool = False
    after_events: int = 1

    @classmethod
    def http(cls, status: int, retry_after: float | str | None = None) -> Fault:
        """Answer ``status`` with an OpenAI-style error body (and ``Retry-After`` when given)."""
        return cls("status", status=status, retry_after=None if retry_after is None else str(retry_after))

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without any response."""
        return cls("drop")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before the first byte, then answer normally."""
        return cls("delay", seconds=seconds)

    @classmethod
    def fail_before_content(cls, *, in_band: bool = False) -> Fault:
        """A stream that sends 200 (and, for chat, its role chunk), then fails before any
        content: the connection is cut, or an error event ends it when ``in_band``.
        A plain (non-streaming) request is dropped."""
        return cls("fail_before_content", in_band=in_band)

    @classmethod
    def fail_after_content(cls, events: int = 1, *, in_band: bool = False) -> Fault:
        """A stream that fails after ``events`` content events (cut, or an error event when
        ``in_band``). A plain request is dropped."""
        return cls("fail_after_content", in_band=in_band, after_events=events)

    @classmethod
    def no_usage(cls) -> Fault:
        """Answer normally but without ``usage`` (nor a stream's usage chunk)."""
        return cls("no_usage")

    @classmethod
    def slow(cls, token_interval: float) -> Fault:
        """Answer normally with ``token_interval`` seconds between tokens."""
        return cls("slow", seconds=token_interval)


@dataclass
class RecordedRequest:
    """One generating request as the provider saw it."""

    path: str
    headers: CIMultiDictProxy[str]
    body: Any
    """The parsed JSON body, or None when it did not parse."""
    received_at: float
    """``time.monotonic()`` when it arrived."""
    fault: Fault | None = None
    status: int | None = None
    """Status sent (None while waiting, or when dropped before any response)."""
    completed: bool = False
    """The response was sent to its end (a stream through ``[DONE]``)."""
    aborted: bool = False
    """The client went away before the response was complete."""


@dataclass
class _Queued:
    fault: Fault
    remaining: int | None  # None: always


@dataclass
class ProviderState:
    """Shared between the handlers (on the provider's loop) and the test's thread."""

    config: ProviderConfig
    faults: list[_Queued] = field(default_factory=list)
    records: list[RecordedRequest] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def queue(self, fault: Fault, count: int | None) -> None:
        """Apply ``fault`` to the next ``count`` requests (None: all), after those queued before."""
        with self.changed:
            self.faults.append(_Queued(fault, count))

    def take_fault(self) -> Fault | None:
        """The fault for the request that just arrived, if any."""
        with self.changed:
            for queued in self.faults:
                if queued.remaining is not None:
                    queued.remaining -= 1
                    if queued.remaining == 0:
                        self.faults.remove(queued)
                return queued.fault
        return None

    def record(self, record: RecordedRequest) -> None:
        """Add a request that arrived."""
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def update(self, record: RecordedRequest, **changes: Any) -> None:
        """Change fields of a recorded request and wake whoever waits on the records."""
        with self.changed:
            for key, value in changes.items():
                setattr(record, key, value)
            self.changed.notify_all()
