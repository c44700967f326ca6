#!/usr/bin/env bash
# Make sure the e2e cluster's binaries are built; the test command runs this before pytest.
#
#   e2e/cluster/ensure.sh [BINARY...]
#
# Idempotent: builds only what is missing from the cache (see build.sh), checks
# that each binary runs, and prints the binary directory on stdout. Default
# binaries: etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm.
# Exits non-zero, saying why, when a build or check fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# One function, read whole before it runs: editing this file during the
# (long) build cannot derail a run in progress.
main() {
  local binaries=("$@") start bin_dir b out check
  [[ ${#binaries[@]} -gt 0 ]] || binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm)

  start=$SECONDS
  if ! bin_dir="$("$here/build.sh" "${binaries[@]}")"; then
    echo "ensure.sh: building the e2e cluster binaries failed (see the messages above)." >&2
    echo "ensure.sh: they are built from the Go module proxy with Go >= 1.26; see e2e/cluster/README.md." >&2
    exit 1
  fi

  for b in "${binaries[@]}"; do
    case "$b" in
      helm) check=(version --short) ;;
      *) check=(--version) ;;
    esac
    if ! out="$("$bin_dir/$b" "${check[@]}" 2>&1)"; then
      echo "ensure.sh: $bin_dir/$b does not run: $out" >&2
      echo "ensure.sh: rebuild it with: e2e/cluster/build.sh --force $b" >&2
      exit 1
    fi
    echo "ensure.sh: $b: $(head -n1 <<<"$out")" >&2
  done
  echo "ensure.sh: e2e cluster binaries ready in $((SECONDS - start))s" >&2
  echo "$bin_dir"
}
main "$@"
exit
