#!/usr/bin/env bash
# A kind cluster with a fake-GPU worker, for trying Ebbtide locally and for the e2e suite.
#
#   e2e/kind/kind.sh up     create the cluster (if absent) and give its worker
#                           EBBTIDE_KIND_GPUS (default 4) fake nvidia.com/gpu
#   e2e/kind/kind.sh test   run the e2e suite against it (EBBTIDE_E2E_KUBECONFIG)
#   e2e/kind/kind.sh down   delete the cluster
#
# Needs docker, kind and kubectl on PATH. `test` also needs kwok (it plays the
# suite's extra fake GPU nodes from outside the cluster): built by
# e2e/cluster/ensure.sh kwok, or any kwok on PATH.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
name="${KIND_CLUSTER_NAME:-ebbtide}"
gpus="${EBBTIDE_KIND_GPUS:-4}"
kubeconfig="${EBBTIDE_KIND_KUBECONFIG:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide/kind-$name.kubeconfig}"

die() { echo "kind.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is not on PATH (${2})"; }

up() {
  need docker "https://docs.docker.com/engine/install/"
  need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
  need kubectl "https://kubernetes.io/docs/tasks/tools/"
  if ! kind get clusters 2>/dev/null | grep -qx "$name"; then
    kind create cluster --name "$name" --config "$here/kind-config.yaml" --wait 120s
  fi
  mkdir -p "$(dirname "$kubeconfig")"
  kind get kubeconfig --name "$name" >"$kubeconfig"
  chmod 600 "$kubeconfig"
  local k=(kubectl --kubeconfig "$kubeconfig")
  local node
  for node in $("${k[@]}" get nodes -l ebbtide.dev/fake-gpu=true -o name); do
    # An extended resource is advertised by adding it to the node's status
    # capacity; the kubelet then copies it into allocatable. No device plugin
    # is involved, so containers get no GPU: pods only schedule as if they had one.
    "${k[@]}" patch "$node" --subresource=status --type=json \
      -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$gpus\"}]"
    "${k[@]}" label --overwrite "$node" nvidia.com/gpu.present=true nvidia.com/gpu.count="$gpus"
  done
  echo "kind.sh: cluster $name is up; export KUBECONFIG=$kubeconfig" >&2
}

run_tests() {
  [[ -f "$kubeconfig" ]] || die "no kubeconfig at $kubeconfig; run: $0 up"
  local python="${PYTHON:-$repo/.venv/bin/python}"
  [[ -x "$python" ]] || python="python3"
  cd "$repo"
  EBBTIDE_E2E_KUBECONFIG="$kubeconfig" "$python" -m pytest -m e2e e2e "$@"
}

case "${1:-}" in
  up) up ;;
  test) shift; run_tests "$@" ;;
  down) need kind "https://kind.sigs.k8s.io/"; kind delete cluster --name "$name"; rm -f "$kubeconfig" ;;
  *) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 2 ;;
esac
