"""Log output of the daemon: one JSON object per line (default) or readable text.

A decision's log line is a dict (see `decisionlog.log_line`) passed as the record's message; in JSON it
becomes the line itself with `level` and `logger` added, in text the pool, the change and the reason.
Any other record is `{"time", "level", "logger", "message"}`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "setup_logging"]


def _time(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        if isinstance(record.msg, Mapping):
            line: dict[str, Any] = {**record.msg, "level": record.levelname.lower(), "logger": record.name}
            line.setdefault("time", _time(record))
        else:
            line = {
                "time": _time(record),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines: decisions as `ns/pool 1 → 2 (reason): message`."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of text."""
        if isinstance(record.msg, Mapping):
            m = record.msg
            text = (
                f"{m.get('namespace')}/{m.get('pool')} {m.get('from')} → {m.get('to')} "
                f"ready {m.get('ready')} ({m.get('reason')}{', dry run' if m.get('dry_run') else ''}"
                f"{', applied' if m.get('applied') else ''}): {m.get('message')}"
            )
        else:
            text = record.getMessage()
        out = f"{_time(record)} {record.levelname.lower():7} {record.name}: {text}"
        if record.exc_info:
            out += "\n" + self.formatException(record.exc_info)
        return out


def setup_logging(log_format: str, level: str) -> None:
    """Send every `ebbtide.*` logger to stdout in the chosen format and level."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("ebbtide").setLevel(getattr(logging, level.upper()))
