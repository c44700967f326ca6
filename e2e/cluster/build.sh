#!/usr/bin/env bash
# Build the local control plane for the e2e tests from the Go module proxy.
#
#   e2e/cluster/build.sh [--force] [BINARY...]
#
# BINARY is any of: kube-apiserver kube-controller-manager kube-scheduler etcd kwok helm
# (default: all). A binary already in the cache with a matching version stamp is
# kept unless --force is given. Binaries land in
#   ${EBBTIDE_K8S_BIN_DIR:-${XDG_CACHE_HOME:-~/.cache}/ebbtide/k8s-<K8S_VERSION>}
# and each has a stamp file <binary>.version next to it.
#
# Set EBBTIDE_BUILD_TIMES=1 to run each `go build` under /usr/bin/time -v and
# append wall time and peak RSS to <bin dir>/build-times.log.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

all_binaries=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok helm)

bin_dir="${EBBTIDE_K8S_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide/k8s-$K8S_VERSION}"

die() { echo "build.sh: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

force=0
wanted=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|etcd|kwok|helm) wanted+=("$arg") ;;
    *) die "unknown binary or option: $arg (known: ${all_binaries[*]})" ;;
  esac
done
[[ ${#wanted[@]} -gt 0 ]] || wanted=("${all_binaries[@]}")

# The official Go tarball installs to /usr/local/go; a non-login shell (CI) may lack it on PATH.
command -v go >/dev/null || [[ ! -x /usr/local/go/bin/go ]] || export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || die "Go is not installed (need Go >= 1.26 to build Kubernetes $K8S_VERSION)"

# Static binaries; the upstream release builds strip symbols the same way (-s -w),
# which also makes linking noticeably faster on two cores.
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

mkdir -p "$bin_dir"
exec 9>"$bin_dir/.build.lock"
flock 9 # two concurrent runs would otherwise build the same binary twice

work="$(mktemp -d "${TMPDIR:-/tmp}/ebbtide-k8s-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/out"

# Module directory of MODULE@VERSION in the module cache, downloading it if needed.
module_dir() {
  go mod download -json "$1" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p'
}

# Required version of module $2 in go.mod file $1.
required_version() {
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$1"
}

# `go build` or `go install` (first argument after the name), optionally under
# /usr/bin/time -v with wall time and peak RSS logged.
timed_go() {
  local name="$1"; shift
  if [[ "${EBBTIDE_BUILD_TIMES:-0}" == 1 && -x /usr/bin/time ]]; then
    local t="$work/time-$name"
    /usr/bin/time -v -o "$t" go "$@"
    local wall rss
    wall="$(sed -n 's/^\s*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$t")"
    rss="$(sed -n 's/^\s*Maximum resident set size (kbytes): //p' "$t")"
    echo "$(date -u +%FT%TZ) $name wall=$wall peak_rss_mib=$((rss / 1024)) cores=$(nproc)" \
      | tee -a "$bin_dir/build-times.log" >&2
  else
    go "$@"
  fi
}

is_current() { # binary version
  [[ $force == 0 && -f "$bin_dir/$1" && -x "$bin_dir/$1" && -f "$bin_dir/$1.version" \
     && "$(cat "$bin_dir/$1.version")" == "$2" ]]
}

install_binary() { # name version built-file
  [[ -f "$3" && -x "$3" ]] || die "the build of $1 left no executable at $3"
  rm -rf "${bin_dir:?}/$1"
  mv -f "$3" "$bin_dir/$1"
  echo "$2" >"$bin_dir/$1.version"
  log "built $1 $2 -> $bin_dir/$1"
}

# --- Kubernetes -------------------------------------------------------------
# `go install k8s.io/kubernetes/cmd/...@vX` fails: Kubernetes' go.mod requires
# every staging module (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0 and maps it
# to ./staging/... with replace. A wrapper module that replaces each of them by
# its published v0.Y.Z tag builds the same code. The staging list is read from
# Kubernetes' own go.mod because it changes between minors.
k8s_mod=""
k8s_wrapper() {
  [[ -n "$k8s_mod" ]] && return
  k8s_mod="$work/k8s"
  mkdir -p "$k8s_mod"
  local gomod staging_version
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$gomod" ]] || die "the module proxy did not serve k8s.io/kubernetes@$K8S_VERSION"
  staging_version="v0.${K8S_VERSION#v1.}"
  {
    echo "module ebbtide.local/k8s-build"
    echo
    echo "go $(awk '$1 == "go" { print $2; exit }' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$gomod" | while read -r m; do
      echo "	$m => $m $staging_version"
    done
    echo ")"
  } >"$k8s_mod/go.mod"
  [[ $(grep -c ' => k8s.io/' "$k8s_mod/go.mod") -gt 10 ]] \
    || die "found no staging modules in $gomod; has Kubernetes' go.mod layout changed?"
  log "resolving k8s.io/kubernetes $K8S_VERSION with $(grep -c ' => k8s.io/' "$k8s_mod/go.mod") staging modules at $staging_version"
  (cd "$k8s_mod" && go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" \
     "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" \
     "k8s.io/kubernetes/cmd/kube-scheduler@$K8S_VERSION" 2>&1 | grep -v '^go: downloading' >&2 || true)
  grep -q "k8s.io/kubernetes $K8S_VERSION" "$k8s_mod/go.mod" \
    || die "could not resolve the Kubernetes $K8S_VERSION wrapper module (see errors above)"
}

# -ldflags as upstream's hack/lib/version.sh writes them; without them
# /version reports v0.0.0-master and version checks (e.g. Helm's) fail.
# Like upstream's build from a source tarball, no git commit is stamped:
# the module proxy's copy has none.
k8s_ldflags() {
  local v="${K8S_VERSION#v}" flags="-s -w" key val kv
  local major="${v%%.*}" rest="${v#*.}"
  local minor="${rest%%.*}"
  for kv in "gitVersion=$K8S_VERSION" "gitMajor=$major" "gitMinor=$minor" \
            "buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; do
    key="${kv%%=*}"; val="${kv#*=}"
    flags+=" -X k8s.io/client-go/pkg/version.$key=$val -X k8s.io/component-base/version.$key=$val"
  done
  echo "$flags"
}

build_k8s() { # name
  is_current "$1" "$K8S_VERSION" && return
  k8s_wrapper
  log "building $1 $K8S_VERSION (cold: several minutes)"
  (cd "$k8s_mod" && timed_go "$1" build -ldflags "$(k8s_ldflags)" -o "$work/out/$1" "k8s.io/kubernetes/cmd/$1")
  install_binary "$1" "$K8S_VERSION" "$work/out/$1"
}

# --- etcd -------------------------------------------------------------------
etcd_version() {
  local dir v
  dir="$(module_dir "k8s.io/kubernetes@$K8S_VERSION")"
  v="$(sed -n 's/^ETCD_VERSION=\${ETCD_VERSION:-\([0-9.]*\)}$/\1/p' "$dir/hack/lib/etcd.sh")"
  [[ -n "$v" ]] || die "cannot read the etcd version pinned in $dir/hack/lib/etcd.sh"
  echo "v$v"
}

build_etcd() {
  local v; v="$(etcd_version)"
  is_current etcd "$v" && return
  # go.etcd.io/etcd/server/v3 has replace directives (../api, ...) too, so
  # `go install` refuses it; a wrapper module requires the tagged modules.
  local mod="$work/etcd"
  mkdir -p "$mod"
  printf 'module ebbtide.local/etcd-build\n\ngo 1.26\n' >"$mod/go.mod"
  log "building etcd $v (the version Kubernetes $K8S_VERSION pins)"
  (cd "$mod" && go get "go.etcd.io/etcd/server/v3@$v" "go.etcd.io/etcd/api/v3@$v" \
     "go.etcd.io/etcd/client/pkg/v3@$v" "go.etcd.io/etcd/client/v3@$v" "go.etcd.io/etcd/pkg/v3@$v" \
     2>&1 | grep -v '^go: downloading' >&2 || true)
  grep -q "go.etcd.io/etcd/server/v3 $v" "$mod/go.mod" || die "could not resolve go.etcd.io/etcd/server/v3@$v"
  (cd "$mod" && timed_go etcd build -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$v" \
     -o "$work/out/etcd" go.etcd.io/etcd/server/v3)
  install_binary etcd "$v" "$work/out/etcd"
}

# --- kwok and helm ----------------------------------------------------------
# Both modules have no replace directives, so a plain `go install pkg@version`
# into a private GOBIN works.
go_install() { # name package version ldflags
  local gobin="$work/gobin-$1"
  mkdir -p "$gobin"
  GOBIN="$gobin" timed_go "$1" install -ldflags "$4" "$2@$3"
  install_binary "$1" "$3" "$gobin/$1"
}

build_kwok() {
  is_current kwok "$KWOK_VERSION" && return
  log "building kwok $KWOK_VERSION"
  go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" \
    "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
}

build_helm() {
  is_current helm "$HELM_VERSION" && return
  log "building helm $HELM_VERSION"
  local major="${HELM_VERSION%%.*}" gomod kminor
  gomod="$(go mod download -json "helm.sh/helm/$major@$HELM_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$gomod" ]] || die "the module proxy did not serve helm.sh/helm/$major@$HELM_VERSION"
  # Helm's release build stamps the Kubernetes minor it was built against
  # (used by `helm template` as the default .Capabilities.KubeVersion).
  kminor="$(required_version "$gomod" k8s.io/client-go | cut -d. -f2)"
  local pkg="helm.sh/helm/$major"
  go_install helm "$pkg/cmd/helm" "$HELM_VERSION" \
    "-s -w -X $pkg/internal/version.version=$HELM_VERSION -X $pkg/internal/version.gitTreeState=clean \
     -X $pkg/pkg/lint/rules.k8sVersionMajor=1 -X $pkg/pkg/lint/rules.k8sVersionMinor=$kminor \
     -X $pkg/pkg/chartutil.k8sVersionMajor=1 -X $pkg/pkg/chartutil.k8sVersionMinor=$kminor"
}

# Everything runs from this one function, read whole before it starts, so that
# editing or updating this file during a long build cannot derail the run.
main() {
  local b
  for b in "${wanted[@]}"; do
    case "$b" in
      kube-apiserver|kube-controller-manager|kube-scheduler) build_k8s "$b" ;;
      etcd) build_etcd ;;
      kwok) build_kwok ;;
      helm) build_helm ;;
    esac
  done
  echo "$bin_dir"
}
main
exit
