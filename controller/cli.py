"""The `ebbtide` command: one subcommand per module, registered in one table."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from controller.crd import CRD_PATH, crd_yaml
from controller.validate import load_pools

__all__ = ["main"]

# Subcommands living in their own modules, each exposing register(subparsers); sorted by name.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "controller.breakeven",
    "controller.daemon.cli",
    "controller.dayplan",
    "controller.sim.cli",
    "gateway.cli",
)


def _crd(args: argparse.Namespace) -> int:
    text = crd_yaml()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    worst = 0
    for name in args.files:
        pools, problems = load_pools(Path(name))
        if problems:
            worst = 2
            for problem in problems:
                print(f"{name}: {problem}")
        else:
            names = ", ".join(f"{p.metadata.namespace}/{p.metadata.name}" for p in pools)
            print(f"{name}: valid ({names})")
    return worst


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="ebbtide", description="GPU autoscaler for self-hosted LLM inference.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    crd = sub.add_parser("crd", help="write the GPUPool CRD generated from the spec")
    crd.add_argument("--output", default=str(CRD_PATH), help=f"file to write (default {CRD_PATH})")
    crd.add_argument("--stdout", action="store_true", help="print instead of writing")
    crd.set_defaults(func=_crd)

    validate = sub.add_parser("validate", help="check GPUPool YAML files; exit 2 when any is invalid")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=_validate)

    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
