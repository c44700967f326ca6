"""Helpers for the simulator's CLI tests."""

from __future__ import annotations

import argparse

from controller.sim import cli


def simulate_args(argv: list[str]) -> argparse.Namespace:
    """`ebbtide simulate ARGV` parsed as the CLI parses it."""
    parser = argparse.ArgumentParser(prog="ebbtide")
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["simulate", *argv])
