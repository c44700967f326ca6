"""`ebbtide validate`: every problem in a GPUPool file, each with its field path and the rule broken."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from policies.spec import GPUPool

__all__ = ["Problem", "error_messages", "field_path", "load_pools", "validate_documents", "validate_file"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one document."""

    document: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"document {self.document}: " if self.document else ""
        return f"{where}{self.path or '<root>'}: {self.message}"


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the YAML path a user reads: `spec.schedule.windows[0].start`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def error_messages(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(field path, message) for each problem of a validation error, worded for a user; `prefix` is
    prepended to each location (e.g. ("spec",) for a spec validated on its own)."""
    found = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "required field is missing"
        found.append((field_path((*prefix, *error["loc"])), message))
    return found


def validate_documents(documents: list[Any]) -> tuple[list[GPUPool], list[Problem]]:
    """Validate parsed YAML documents as GPUPools; empty documents are ignored."""
    pools: list[GPUPool] = []
    problems: list[Problem] = []
    numbered = len([d for d in documents if d is not None]) > 1
    for index, document in enumerate(d for d in documents if d is not None):
        number = index + 1 if numbered else 0
        if not isinstance(document, dict):
            problems.append(
                Problem(number, "", f"expected a mapping (a GPUPool object), got {type(document).__name__}")
            )
            continue
        try:
            pools.append(GPUPool.model_validate(document))
        except ValidationError as exc:
            problems.extend(Problem(number, path, message) for path, message in error_messages(exc))
    return pools, problems


def load_pools(path: Path) -> tuple[list[GPUPool], list[Problem]]:
    """Read and validate a YAML file of one or more GPUPools; unreadable files become problems too."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [], [Problem(0, "", f"cannot read {path}: {exc.strerror or exc}")]
    except UnicodeDecodeError:
        return [], [Problem(0, "", f"{path} is not UTF-8 text")]
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return [], [Problem(0, "", f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}")]
    if not any(d is not None for d in documents):
        return [], [Problem(0, "", f"{path} holds no GPUPool")]
    return validate_documents(documents)


def validate_file(path: Path) -> list[Problem]:
    """Every problem in the file; empty when it is valid."""
    return load_pools(path)[1]
