"""The daemon's log formats, the status writer's patch merging, and the CLI's flag checks."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from controller import defaults
from controller.cli import build_parser
from controller.daemon.cli import settings_from_args
from controller.daemon.logs import JsonFormatter, TextFormatter
from controller.daemon.statuswriter import merge_patches


def _record(msg: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("ebbtide.decisions", level, __file__, 1, msg, None, None)


LINE = {
    "time": "2026-12-01T10:00:00.000Z",
    "pool": "chat",
    "namespace": "llm",
    "from": 1,
    "to": 2,
    "ready": 1,
    "reason": "queue-high",
    "message": "1 → 2: queue 12",
    "applied": True,
    "dry_run": False,
}


def test_a_decision_is_the_json_line_itself() -> None:
    out = json.loads(JsonFormatter().format(_record(LINE)))
    assert out == {**LINE, "level": "info", "logger": "ebbtide.decisions"}


def test_any_other_record_is_time_level_logger_message() -> None:
    out = json.loads(JsonFormatter().format(_record("hello %s")))
    assert out["message"] == "hello %s" and out["level"] == "info" and out["time"].endswith("Z")


def test_text_shows_the_change_and_the_reason() -> None:
    text = TextFormatter().format(_record(LINE))
    assert "llm/chat 1 → 2 ready 1 (queue-high, applied): 1 → 2: queue 12" in text


def test_merged_patches_do_what_both_do_in_order() -> None:
    first = {"desiredReplicas": 1, "lastDecision": {"reason": "prewarm", "time": "t1"}, "activeWindow": None}
    second = {"lastDecision": {"reason": "window-open"}, "activeWindow": "office", "readyReplicas": 1}
    assert merge_patches(first, second) == {
        "desiredReplicas": 1,
        "lastDecision": {"reason": "window-open", "time": "t1"},
        "activeWindow": "office",
        "readyReplicas": 1,
    }
    assert merge_patches({"a": 1}, {"a": None}) == {"a": None}


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["controller", *argv])


def test_flag_defaults_are_the_shared_ones() -> None:
    settings = settings_from_args(_args())
    assert settings.tick_seconds == defaults.TICK_SECONDS
    assert settings.log_format == defaults.LOG_FORMAT
    assert settings.lease_name == defaults.LEASE_NAME
    assert settings.metrics_addr == ("0.0.0.0", 8081) and defaults.CONTROLLER_METRICS_ADDR == "0.0.0.0:8081"
    assert settings.leader_elect and not settings.dry_run and not settings.once and settings.kubeconfig is None
    assert settings_from_args(_args("--no-leader-elect", "--metrics-addr", "")).metrics_addr is None
    assert not settings_from_args(_args("--no-leader-elect")).leader_elect


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--metrics-addr", "8081"], "--metrics-addr"),
        (["--metrics-addr", "host:99999"], "65535"),
        (["--gateway-port", "0"], "--gateway-port"),
        (["--gateway-url", "gateway:8080"], "--gateway-url"),
    ],
)
def test_bad_flag_values_name_the_flag(argv: list[str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        settings_from_args(_args(*argv))


def test_a_tick_that_is_not_positive_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _args("--tick", "0")
    assert "must be more than 0 seconds" in capsys.readouterr().err


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["controller", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--kubeconfig",
        "--namespace",
        "--dry-run",
        "--once",
        "--tick",
        "--log-format",
        "--metrics-addr",
        "--leader-elect",
        "--no-leader-elect",
        "--gateway-selector",
        "--gateway-url",
    ):
        assert flag in text
