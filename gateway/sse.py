"""Reading a server-sent event stream on the side while its bytes are relayed.

The relay forwards the upstream's bytes as they arrive (no line reads: one event can exceed 128 KB);
this scanner keeps only the unfinished tail of the last event, to see three things: whether the first
content event has passed (before it a failure may still move to another provider), an error event, and
the usage chunk (`choices: []` with `usage`), which it removes when the client did not ask for it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

__all__ = ["SseScanner"]

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# A tail this long without an event boundary is not worth scanning: the relay passes it on unread.
_MAX_TAIL = 16 * 1024 * 1024


def _data(event: bytes) -> bytes | None:
    """The data of one event (its `data:` lines joined), None for a comment-only or empty event."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


class SseScanner:
    """Side-reads one stream; `feed` returns the bytes to pass on (the chunk itself unless stripping)."""

    __slots__ = ("_tail", "committed", "content_events", "done", "error", "late_error", "strip_usage", "usage")

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self._tail = b""
        self.committed = False
        """The first content event (a token, a tool call, a finish reason, usage or the end marker) has
        been seen; the role chunk before it does not count."""
        self.done = False
        """`data: [DONE]` has been seen."""
        self.error: Any = None
        """An error event's `error` object seen before the first content event."""
        self.late_error = False
        """An error event came after the first content event (relayed: the stream ends with it)."""
        self.usage: dict[str, Any] | None = None
        self.content_events = 0

    def feed(self, chunk: bytes) -> bytes:
        """Scan a chunk; return what to relay (the chunk unchanged, or without the usage event)."""
        if (
            self.committed
            and not self._tail
            and chunk.endswith(b"\n\n")
            and b'"usage"' not in chunk
            and b'"error"' not in chunk
        ):
            # The common case once the stream is under way: whole events, none of them the usage chunk.
            self.content_events += chunk.count(b"\n\n")
            if b"data: [DONE]" in chunk:
                self.done = True
            return chunk
        buf = self._tail + chunk if self._tail else chunk
        pos = 0
        out: list[bytes] | None = [] if self.strip_usage else None
        for match in _BOUNDARY.finditer(buf):
            end = match.end()
            keep = self._event(buf[pos : match.start()])
            if out is not None and keep:
                out.append(buf[pos:end])
            pos = end
        tail = buf[pos:]
        if len(tail) > _MAX_TAIL:
            # A giant event: pass it on as it is and stop looking inside it.
            if out is not None:
                out.append(tail)
            tail = b""
        self._tail = tail
        if out is None:
            return chunk
        return b"".join(out)

    def flush(self) -> bytes:
        """At the end of the stream: an unfinished last event, passed on as it is when stripping."""
        tail, self._tail = self._tail, b""
        if tail.strip():
            self._event(tail)
        return tail if self.strip_usage else b""

    def _event(self, event: bytes) -> bool:
        """Read one complete event; False when it is the usage chunk to strip."""
        data = _data(event)
        if data is None:
            return True
        if data == b"[DONE]":
            self.done = self.committed = True
            return True
        if not self.committed or b'"usage"' in data or b'"error"' in data:
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                if "error" in obj:
                    if self.committed:
                        self.late_error = True
                    else:
                        self.error = obj["error"]
                    return True
                usage = obj.get("usage")
                if isinstance(usage, dict):
                    self.usage = usage
                    if obj.get("choices") == []:
                        self.committed = True
                        return not self.strip_usage
                if not self.committed and not _has_content(obj):
                    return True  # the role chunk: a stream may still fail over after it
        self.committed = True
        self.content_events += 1
        return True


_CONTENT_KEYS = ("content", "text", "tool_calls", "function_call", "reasoning_content", "refusal")


def _has_content(obj: dict[str, Any]) -> bool:
    """Whether a chunk carries output (a token, a tool call) or a finish reason, not just the role."""
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return True  # not a chunk shape the scanner knows: do not hold it back
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason") is not None or choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(delta.get(k) for k in _CONTENT_KEYS):
            return True
    return False
