"""Request traces in: Azure CSV, Mooncake JSONL and a plain CSV, read into one columnar value.

Every reader returns a `Trace`: arrival offsets in seconds from the first request, prompt and generated
token counts, and the wall-clock moment of the first request when the file says it. Bad input raises
`TraceError`, which names the file, the line and the field, so the command can print it and exit 2.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["Trace", "TraceError", "TraceFormat", "detect_format", "read_trace"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class TraceFormat(StrEnum):
    """The request-trace layouts the simulator reads."""

    AZURE = "azure"
    """Azure LLM inference trace CSV: TIMESTAMP (wall clock), ContextTokens, GeneratedTokens."""
    MOONCAKE = "mooncake"
    """Mooncake JSONL: timestamp (ms from the trace start), input_length, output_length."""
    PLAIN = "plain"
    """Plain CSV: timestamp_s (seconds, any origin), input_tokens, output_tokens."""


_CSV_HEADERS: dict[TraceFormat, tuple[str, str, str]] = {
    TraceFormat.AZURE: ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    TraceFormat.PLAIN: ("timestamp_s", "input_tokens", "output_tokens"),
}
_JSON_KEYS = ("timestamp", "input_length", "output_length")


class TraceError(ValueError):
    """A trace that cannot be read; the message names the file, the line and the field."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None, field: str | None = None):
        where = f"{path}" + (f":{line}" if line is not None else "")
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {message}")
        self.path = str(path)
        self.line = line
        self.field = field


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests sorted by arrival: offsets from the first request (s), prompt and generated tokens."""

    arrival_s: FloatArray
    input_tokens: IntArray
    output_tokens: IntArray
    started_at: dt.datetime | None
    source: str

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def span_seconds(self) -> float:
        """Time from the first to the last arrival."""
        return float(self.arrival_s[-1]) if len(self) else 0.0


def detect_format(path: Path) -> TraceFormat:
    """Guess the layout from the first line: a JSON object is Mooncake, a CSV header names the rest."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            first = handle.readline().strip().lstrip("\ufeff")
    except OSError as exc:
        raise TraceError(path, f"cannot open: {exc.strerror or exc}") from exc
    if not first:
        raise TraceError(path, "the file is empty", line=1)
    if first.startswith("{"):
        return TraceFormat.MOONCAKE
    header = tuple(cell.strip() for cell in first.split(","))
    for fmt, columns in _CSV_HEADERS.items():
        if set(columns) <= set(header):
            return fmt
    known = "; ".join(f"{fmt.value}: {','.join(cols)}" for fmt, cols in _CSV_HEADERS.items())
    raise TraceError(
        path,
        f"unknown trace layout (header {first[:80]!r}); expected a CSV header ({known}) "
        f"or Mooncake JSON lines with {', '.join(_JSON_KEYS)}",
        line=1,
    )


def read_trace(path: Path | str, fmt: TraceFormat | None = None) -> Trace:
    """Read a trace file in the given layout (detected from its first line when None)."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(path, "no such file")
    fmt = fmt or detect_format(path)
    rows = _read_json_lines(path) if fmt is TraceFormat.MOONCAKE else _read_csv(path, fmt)
    times: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    origin: dt.datetime | None = None
    for line, stamp, prompt, generated in rows:
        if fmt is TraceFormat.AZURE:
            moment = _parse_wall_clock(path, line, _CSV_HEADERS[fmt][0], stamp)
            if origin is None:
                origin = moment
            times.append((moment - origin).total_seconds())
        else:
            seconds = _parse_number(path, line, _stamp_field(fmt), stamp)
            times.append(seconds / 1000.0 if fmt is TraceFormat.MOONCAKE else seconds)
        inputs.append(_parse_count(path, line, _size_fields(fmt)[0], prompt))
        outputs.append(_parse_count(path, line, _size_fields(fmt)[1], generated))
    if not times:
        raise TraceError(path, "the trace holds no requests")
    arrival = np.asarray(times, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    arrival -= arrival[0]
    if origin is not None:
        origin = origin + dt.timedelta(seconds=float(np.min(np.asarray(times))))
    return Trace(
        arrival_s=arrival,
        input_tokens=np.asarray(inputs, dtype=np.int64)[order],
        output_tokens=np.asarray(outputs, dtype=np.int64)[order],
        started_at=origin,
        source=str(path),
    )


def _stamp_field(fmt: TraceFormat) -> str:
    return _JSON_KEYS[0] if fmt is TraceFormat.MOONCAKE else _CSV_HEADERS[fmt][0]


def _size_fields(fmt: TraceFormat) -> tuple[str, str]:
    if fmt is TraceFormat.MOONCAKE:
        return _JSON_KEYS[1], _JSON_KEYS[2]
    return _CSV_HEADERS[fmt][1], _CSV_HEADERS[fmt][2]


def _read_csv(path: Path, fmt: TraceFormat) -> Iterator[tuple[int, str, str, str]]:
    columns = _CSV_HEADERS[fmt]
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise TraceError(path, f"missing column(s) {', '.join(missing)} for the {fmt.value} layout", line=1)
        reader.fieldnames = header
        try:
            for row in reader:
                line = reader.line_num
                values = [row.get(c) for c in columns]
                for name, value in zip(columns, values, strict=True):
                    if value is None or not value.strip():
                        raise TraceError(path, "empty or missing value", line=line, field=name)
                yield line, *(str(v).strip() for v in values)  # type: ignore[misc]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise TraceError(path, f"not readable as CSV: {exc}", line=reader.line_num) from exc


def _read_json_lines(path: Path) -> Iterator[tuple[int, str, str, str]]:
    with path.open(encoding="utf-8") as handle:
        try:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise TraceError(path, f"not a JSON object: {exc.msg}", line=line) from exc
                if not isinstance(record, dict):
                    raise TraceError(path, "not a JSON object", line=line)
                for key in _JSON_KEYS:
                    if key not in record:
                        raise TraceError(path, "missing", line=line, field=key)
                yield line, *(str(record[k]) for k in _JSON_KEYS)  # type: ignore[misc]
        except UnicodeDecodeError as exc:
            raise TraceError(path, f"not UTF-8 text: {exc.reason}") from exc


def _parse_number(path: Path, line: int, field: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(path, f"{text!r} is not a number", line=line, field=field) from None
    if not np.isfinite(value) or value < 0:
        raise TraceError(path, f"{text!r} must be a finite number >= 0", line=line, field=field)
    return value


def _parse_count(path: Path, line: int, field: str, text: str) -> int:
    value = _parse_number(path, line, field, text)
    if value != int(value):
        raise TraceError(path, f"{text!r} is not a whole number of tokens", line=line, field=field)
    return int(value)


def _parse_wall_clock(path: Path, line: int, field: str, text: str) -> dt.datetime:
    """Azure timestamps carry 7 fractional digits and no zone: read them as UTC with microseconds."""
    head, _, fraction = text.partition(".")
    try:
        moment = dt.datetime.fromisoformat(head)
    except ValueError:
        raise TraceError(
            path, f"{text!r} is not a date and time (YYYY-MM-DD HH:MM:SS[.f])", line=line, field=field
        ) from None
    if fraction:
        if not fraction.isdigit():
            raise TraceError(path, f"{text!r} has a malformed fraction of a second", line=line, field=field)
        moment += dt.timedelta(microseconds=int((fraction + "000000")[:6]))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment
