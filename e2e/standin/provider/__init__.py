"""A stand-in for a paid OpenAI-compatible API on loopback, with failure injection.

It answers ``/v1/chat/completions`` and ``/v1/completions`` (plain and streaming, with
``usage``; a stream's usage chunk only when ``stream_options.include_usage`` asks, as
OpenAI does) and ``/v1/models``. A test queues :class:`Fault` s for the next N generating
requests or for all of them: an HTTP status (429 with ``Retry-After``, 5xx, 529, 400...),
a dropped connection, a delay before the first byte, a stream that fails before or after
its first content event, a missing ``usage``, slow tokens. It can stop listening (connect
refused) and listen again on the same port. Every generating request is recorded: headers
(``Authorization`` included), the JSON body, the status sent and whether the client
aborted.

For tests, demos and the benchmark only; not part of the shipped gateway.
"""

from e2e.standin.provider.faults import VLLM_ONLY_FIELDS, Fault, ProviderConfig, RecordedRequest
from e2e.standin.provider.server import BackgroundProvider, StandinProvider

__all__ = ["VLLM_ONLY_FIELDS", "BackgroundProvider", "Fault", "ProviderConfig", "RecordedRequest", "StandinProvider"]
