"""Trace readers: the three layouts, detection, and errors that name the file, line and field."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from controller.sim import cli
from controller.sim.traces import TraceError, TraceFormat, detect_format, read_trace
from tests.sim_support import simulate_args

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "traces" / "azure_code_2023.csv"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_azure_csv_reads_wall_clock_and_sorts(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:05.5000000,10,2\n"
        "2023-11-16 18:17:03.9799600,4808,10\n",
    )
    trace = read_trace(path)
    assert detect_format(path) is TraceFormat.AZURE
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 1.52004])
    assert trace.input_tokens.tolist() == [4808, 10]
    assert trace.started_at == dt.datetime(2023, 11, 16, 18, 17, 3, 979960, tzinfo=dt.UTC)


def test_mooncake_jsonl_reads_milliseconds(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "m.jsonl",
        '{"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0]}\n'
        '{"timestamp": 1500, "input_length": 10, "output_length": 3}\n',
    )
    trace = read_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 1.5]
    assert trace.output_tokens.tolist() == [500, 3]


def test_plain_csv_reads_seconds_from_any_origin(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.csv", "timestamp_s,input_tokens,output_tokens\n100.5,1,2\n102,3,4\n")
    trace = read_trace(path, TraceFormat.PLAIN)
    assert trace.arrival_s.tolist() == [0.0, 1.5]
    assert trace.started_at is None


def test_shipped_example_trace_is_readable() -> None:
    trace = read_trace(EXAMPLE)
    assert len(trace) == 8819
    assert 3400 < trace.span_seconds < 3600
    assert np.all(np.diff(trace.arrival_s) >= 0)


@pytest.mark.parametrize(
    ("name", "text", "fmt", "expected"),
    [
        (
            "bad.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,12x,1\n",
            None,
            "bad.csv:2: field 'ContextTokens'",
        ),
        ("bad.csv", "timestamp_s,input_tokens,output_tokens\n1,2,3\n2,-4,3\n", None, "bad.csv:3: field 'input_tokens'"),
        ("bad.csv", "timestamp_s,input_tokens,output_tokens\n1,2,\n", None, "bad.csv:2: field 'output_tokens'"),
        ("bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n", None, "bad.csv:2: field 'TIMESTAMP'"),
        ("bad.jsonl", '{"timestamp": 0, "input_length": 1}\n', None, "bad.jsonl:1: field 'output_length'"),
        ("bad.jsonl", '{"timestamp": 0, "input_length": 1, "output_length": 1}\nnot json\n', None, "bad.jsonl:2:"),
        ("bad.csv", "when,prompt,answer\n1,2,3\n", None, "unknown trace layout"),
        (
            "bad.csv",
            "timestamp_s,input_tokens,output_tokens\n1,2,3\n",
            TraceFormat.AZURE,
            "missing column(s) TIMESTAMP",
        ),
    ],
)
def test_bad_rows_name_file_line_and_field(
    tmp_path: Path, name: str, text: str, fmt: TraceFormat | None, expected: str
) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(TraceError) as info:
        read_trace(path, fmt)
    assert expected in str(info.value)


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, "bad.csv", "timestamp_s,input_tokens,output_tokens\n1,2,3\n2,x,3\n")
    assert cli.run(simulate_args(["--trace", str(bad), "--no-progress"])) == 2
    err = capsys.readouterr().err
    assert "bad.csv:3: field 'input_tokens'" in err
    assert "Traceback" not in err

    assert cli.run(simulate_args(["--trace", str(tmp_path / "missing.csv"), "--no-progress"])) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err

    assert cli.run(simulate_args(["--pool", str(tmp_path / "nopool.yaml"), "--no-progress"])) == 2
    assert "nopool.yaml" in capsys.readouterr().err

    assert cli.run(simulate_args(["--profile-key", "chat", "--no-progress"])) == 2
    assert "no profile 'chat'" in capsys.readouterr().err
