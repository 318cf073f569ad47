#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-controller-manager, kubectl and helm (targets etcd, kubernetes,
# helm: the default) and, for the test bed's real node, kubelet, kube-scheduler and kube-proxy
# (target node) from the Go module proxy, and cache them under
# ~/.cache/memoria-operator/bin/<name>-<version>-<os>-<arch>/ (override with MEMORIA_BIN_CACHE).
# A second run with the same versions builds nothing. Prints NAME=path lines on stdout for the
# callers (testbed, the demo, .ci/run), for every target whether built now or not; progress goes
# to stderr. Usage: build-k8s-binaries.sh [etcd] [kubernetes] [helm] [node]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${MEMORIA_BIN_CACHE:-$HOME/.cache/memoria-operator/bin}
goos=$(go env GOOS) goarch=$(go env GOARCH)
export CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { printf '[build-k8s-binaries] %s\n' "$*" >&2; }

# run_build NAME DEST_DIR FUNCTION FILE...: call FUNCTION in a scratch module dir unless DEST_DIR
# was completed by an earlier run and holds every FILE.
run_build() {
  local name=$1 dest=$2 fn=$3 f complete=1
  shift 3
  for f in .complete "$@"; do [[ -x "$dest/$f" || ( $f == .complete && -f "$dest/$f" ) ]] || complete=0; done
  if (( complete )); then
    return 0
  fi
  local work start
  work=$(mktemp -d)
  start=$(date +%s)
  log "building $name into $dest (first use only; this takes a few minutes on 2 cores)"
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  ( cd "$work"; "$fn" "$dest.tmp" ) >&2
  echo "built_in_seconds=$(( $(date +%s) - start ))" > "$dest.tmp/.complete"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  rm -rf "$work"
  log "built $name in $(( $(date +%s) - start ))s"
}

build_etcd() {
  local out=$1
  go mod init memoria.local/etcd >/dev/null 2>&1
  cat > main.go <<'GO'
// Command etcd runs the upstream etcd server main.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go get "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}"
  go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$out/etcd" .
}

# build_kubernetes OUT CMD...: the wrapper module below, then `go build` of each
# k8s.io/kubernetes/cmd/CMD into OUT. The control plane and the node's binaries are built by two
# calls (two cache directories, so process-only users never pay for the node's) that resolve the
# same module graph and share the Go build cache.
build_kubernetes() {
  local out=$1
  shift
  local cmds=("$@")
  go mod init memoria.local/kubernetes >/dev/null 2>&1
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and points them at ./staging with
  # replace directives, which Go ignores outside the main module. Replace each one with the
  # published v0.<minor>.<patch> release that matches this Kubernetes version.
  local staging_version="v0.${K8S_VERSION#*.}"
  go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" > k8s.json
  local modfile
  modfile=$(python3 -c 'import json,sys; print(json.load(open("k8s.json"))["GoMod"])')
  local mods
  mods=$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile")
  [[ -n "$mods" ]] || { log "no staging modules found in $modfile"; return 1; }
  local args=()
  for m in $mods; do args+=("-replace=$m=$m@$staging_version"); done
  go mod edit "${args[@]}" "-require=k8s.io/kubernetes@v${K8S_VERSION}"
  {
    printf '//go:build tools\n\n// Package tools pins the commands this module builds.\npackage tools\n\nimport (\n'
    for cmd in "${cmds[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done
    printf ')\n'
  } > tools.go
  go mod tidy -e >/dev/null 2>&1 || true
  go mod download
  local ver="v${K8S_VERSION}" major=${K8S_VERSION%%.*} rest=${K8S_VERSION#*.}
  local minor=${rest%%.*} now
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$ver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$now -X $pkg.gitCommit=module-proxy"
  done
  local start
  for cmd in "${cmds[@]}"; do
    start=$(date +%s)
    log "  go build $cmd"
    go build -trimpath -ldflags "$ld" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    log "  built $cmd in $(( $(date +%s) - start ))s"
  done
}

build_control_plane() { build_kubernetes "$1" kube-apiserver kube-controller-manager kubectl; }
build_node() { build_kubernetes "$1" kubelet kube-scheduler kube-proxy; }

build_helm() {
  local out=$1
  go mod init memoria.local/helm >/dev/null 2>&1
  cat > tools.go <<'GO'
//go:build tools

// Package tools pins the commands this module builds.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
GO
  go get "helm.sh/helm/v3@v${HELM_VERSION}"
  go mod tidy -e >/dev/null 2>&1 || true
  go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    -o "$out/helm" helm.sh/helm/v3/cmd/helm
}

etcd_dir="$cache/etcd-v${ETCD_VERSION}-${goos}-${goarch}"
k8s_dir="$cache/kubernetes-v${K8S_VERSION}-${goos}-${goarch}"
helm_dir="$cache/helm-v${HELM_VERSION}-${goos}-${goarch}"
node_dir="$cache/kubernetes-node-v${K8S_VERSION}-${goos}-${goarch}"

want=${*:-etcd kubernetes helm}
for w in $want; do
  case $w in
    etcd) run_build "etcd v$ETCD_VERSION" "$etcd_dir" build_etcd etcd ;;
    kubernetes)
      run_build "kube-apiserver, kube-controller-manager, kubectl v$K8S_VERSION" "$k8s_dir" \
        build_control_plane kube-apiserver kube-controller-manager kubectl ;;
    helm) run_build "helm v$HELM_VERSION" "$helm_dir" build_helm helm ;;
    node)
      run_build "kubelet, kube-scheduler, kube-proxy v$K8S_VERSION" "$node_dir" \
        build_node kubelet kube-scheduler kube-proxy ;;
    *) log "unknown target '$w' (allowed: etcd kubernetes helm node)"; exit 2 ;;
  esac
done

echo "ETCD=$etcd_dir/etcd"
echo "KUBE_APISERVER=$k8s_dir/kube-apiserver"
echo "KUBE_CONTROLLER_MANAGER=$k8s_dir/kube-controller-manager"
echo "KUBECTL=$k8s_dir/kubectl"
echo "HELM=$helm_dir/helm"
echo "KUBELET=$node_dir/kubelet"
echo "KUBE_SCHEDULER=$node_dir/kube-scheduler"
echo "KUBE_PROXY=$node_dir/kube-proxy"
