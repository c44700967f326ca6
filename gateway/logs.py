"""Logging setup: one JSON object per line (the default, for log collectors) or plain text.

Gateway log lines name pools, providers, endpoints and reasons; never a prompt, a completion, a header
or a key (the handlers log exception types, not their text, for requests).
"""

from __future__ import annotations

import json
import logging
import sys

__all__ = ["JsonFormatter", "configure_logging"]


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message"}` per record, plus a record's `fields` (extra=) as keys of
    their own and `exception` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """Send log records to stderr at `level`, as JSON lines (`json`) or text (`text`)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp logs a line per connection problem of a client; those are the client's, at debug level.
    logging.getLogger("aiohttp.server").setLevel(max(logging.getLevelName(level), logging.ERROR))
