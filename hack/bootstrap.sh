#!/usr/bin/env bash
# Install everything the demo and the tests need on a fresh Debian machine: redis-server,
# PostgreSQL, prometheus (promtool, and the server the dashboard test scrapes with) and faketime
# (clock skew in the federation bed) from Debian, a virtualenv in .venv with the project and its
# test tools, and the control-plane binaries built from the Go module proxy (cached in
# ~/.cache/memoria-operator).
# For the test bed's real node (python -m testbed up --node, the `node` tests) also containerd,
# runc, the CNI plugins, iptables, debootstrap and docker.io (dockerd only builds images) from
# Debian, and kubelet, kube-scheduler and kube-proxy from the Go module proxy; MEMORIA_NODE=0
# skips those (process-only mode needs none of them).
# Safe to run again: each step skips what is already there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '[bootstrap] %s\n' "$*" >&2; }

sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
# promtool tests the alert rules; prometheus scrapes the test bed in the dashboard test
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || packages+=(prometheus)
# libfaketime: the federation bed skews an operator's clock (testbed/federation.py)
command -v faketime >/dev/null 2>&1 || packages+=(faketime)
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  packages+=(postgresql)
fi
node=${MEMORIA_NODE:-1}
if [[ $node != 0 ]]; then
  have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]; }
  have containerd || packages+=(containerd)  # brings ctr; dockerd gets one of its own anyway
  have runc || packages+=(runc)
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/firewall && -x /usr/lib/cni/portmap ]] ||
    packages+=(containernetworking-plugins)
  have iptables || packages+=(iptables)
  have debootstrap || packages+=(debootstrap)
  have dockerd || packages+=(docker.io)
  have ip || packages+=(iproute2)
  have gcc || packages+=(gcc libc6-dev)  # the pause binary, linked statically
fi
python_only=${MEMORIA_BOOTSTRAP_PYTHON_ONLY:-0}  # unit tests: the virtualenv and nothing else
if [[ $python_only != 1 ]]; then
  command -v go >/dev/null 2>&1 || { say "Go is required (https://go.dev/dl); this machine has none"; exit 1; }
fi
if [[ $python_only != 1 ]] && ((${#packages[@]})); then
  say "installing Debian packages: ${packages[*]}"
  sudo_if_needed apt-get update -q >/dev/null
  # the packages' own services are not wanted: tests and the demo start private servers
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -q --no-install-recommends \
    "${packages[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv"
  "$python" -m venv .venv
fi
locks=(docker/requirements.lock hack/test-tools.lock)  # the runtime's pins (the image's) and the tools'
stamp=.venv/.installed-$(cat pyproject.toml "${locks[@]}" | sha256sum | cut -c1-16)
if [[ ! -f $stamp ]]; then
  say "installing the project and its test tools into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -c "${locks[0]}" -c "${locks[1]}" -e '.[test]'
  rm -f .venv/.installed-* && touch "$stamp"
fi
if [[ $python_only == 1 ]]; then
  say "ready for unit tests (MEMORIA_BOOTSTRAP_PYTHON_ONLY=1: no Kubernetes binaries)"
  exit 0
fi

targets=(etcd kubernetes helm)
[[ $node == 0 ]] || targets+=(node)
bash hack/build-k8s-binaries.sh "${targets[@]}" >/dev/null
say "ready"
