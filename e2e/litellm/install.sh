#!/usr/bin/env bash
# Install LiteLLM's proxy into its own virtual environment, for the gateway benchmark's
# comparison row (gateway/bench.py). It is never a dependency of Ebbtide.
#
# The version is pinned to a release from before 1.82.7 and 1.82.8, which shipped a
# credential stealer (BerriAI/litellm#24512); the script refuses those two outright.
#
# Usage: e2e/litellm/install.sh [VENV_DIR]   (default ~/.cache/ebbtide/litellm-venv)
# Prints the venv's python path on its last line. Idempotent: a finished venv is reused.
set -euo pipefail
# LiteLLM fetches its model price map from the internet at import unless told not to.
export LITELLM_LOCAL_MODEL_COST_MAP=True

VENV="${1:-${EBBTIDE_LITELLM_VENV:-$HOME/.cache/ebbtide/litellm-venv}}"
LITELLM_VERSION="${EBBTIDE_LITELLM_VERSION:-1.81.16}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.ebbtide-installed-litellm-$LITELLM_VERSION"

case "$LITELLM_VERSION" in
  1.82.7|1.82.8) echo "litellm $LITELLM_VERSION is a compromised release; choose another" >&2; exit 2 ;;
esac

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import litellm.proxy.proxy_server" >/dev/null 2>&1; then
  echo "litellm $LITELLM_VERSION already installed in $VENV" >&2
  echo "$VENV/bin/python"
  exit 0
fi

start=$(date +%s)
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip
"${PIP[@]}" install --quiet "litellm[proxy]==$LITELLM_VERSION"
installed="$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('litellm'))")"
if [[ "$installed" != "$LITELLM_VERSION" ]]; then
  echo "expected litellm $LITELLM_VERSION, got $installed" >&2
  exit 1
fi
"$VENV/bin/python" -c "import litellm.proxy.proxy_server" >&2
touch "$STAMP"
echo "installed litellm $installed in $(( $(date +%s) - start )) s: $VENV" >&2
echo "$VENV/bin/python"
