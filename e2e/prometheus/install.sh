#!/usr/bin/env bash
# Makes a Prometheus server binary available for e2e/test_prometheus.py and prints its path (last line).
#
#   bash e2e/prometheus/install.sh
#
# Uses $EBBTIDE_PROMETHEUS or a `prometheus` on PATH (or Debian's /usr/bin/prometheus) when there is
# one; otherwise installs Debian's `prometheus` package with apt-get (as root, or through sudo). Only the
# binary is used: the package's own service is neither needed nor started by the tests.
set -euo pipefail

found() { [ -n "$1" ] && [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

for candidate in "${EBBTIDE_PROMETHEUS:-}" "$(command -v prometheus || true)" /usr/bin/prometheus; do
  if found "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo -n)
else
  echo "no prometheus binary found and cannot install one: not root and no sudo" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no prometheus binary found and no apt-get to install Debian's prometheus package;" \
       "install Prometheus and set EBBTIDE_PROMETHEUS to its binary" >&2
  exit 1
fi

echo "installing Debian's prometheus package (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
# The package's postinst may start its own service (port 9090) where an init system runs; the tests never
# use it: each starts its own server on a free loopback port with its own storage.
"${sudo[@]}" apt-get update -q >&2
"${sudo[@]}" apt-get install -y -q --no-install-recommends prometheus >&2 || {
  echo "apt-get install prometheus failed (output above)" >&2
  exit 1
}
bin=$(command -v prometheus || echo /usr/bin/prometheus)
if ! found "$bin"; then
  echo "the prometheus package installed, but no working prometheus binary was found" >&2
  exit 1
fi
echo "$bin"
