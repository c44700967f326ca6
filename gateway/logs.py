"""Logging setup: one JSON object per line (the default, for log collectors) or plain text.

Gateway log lines name pools, providers, endpoints and reasons; never a prompt, a completion, a header
or a key (the handlers log exception types, not their text, for requests).
"""

from __future__ import annotations

import json
import logging
import sys

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

__all__ = ["JsonFormatter", "configure_logging", "quiet_malformed_requests"]


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
    quiet_malformed_requests()


_CLIENT_FAULTS = (HttpProcessingError, RequestPayloadError)
"""A request aiohttp's parser refused (answered 400), and a body that breaks off or does not decode
(answered 400 by the handler; aiohttp logs it again when it drains the rest of the body)."""


class _MalformedRequests(logging.Filter):
    """aiohttp's error record for a malformed request (_CLIENT_FAULTS: the client's fault) becomes a
    one-line DEBUG record, dropped unless the gateway logs at DEBUG; an ERROR with a traceback per bad
    request would let any client flood the log. Other errors pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, _CLIENT_FAULTS):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
        record.args = ()
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_QUIET = _MalformedRequests()


def quiet_malformed_requests() -> None:
    """Install the filter above on aiohttp's server logger (once)."""
    logger = logging.getLogger("aiohttp.server")
    if _QUIET not in logger.filters:
        logger.addFilter(_QUIET)
