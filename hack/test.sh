#!/usr/bin/env bash
# Install everything (hack/bootstrap.sh), then run every check: ruff, mypy --strict, hadolint on
# the Dockerfile, and the whole pytest suite (unit, integration on real Redis/PostgreSQL, e2e on a
# local Kubernetes control plane). Extra arguments go to pytest.
#
# Unit tests alone (`bash hack/test.sh tests/unit -q`, or paths below tests/unit) need neither
# servers nor Kubernetes binaries: the bootstrap is skipped while .venv is current for this
# pyproject.toml, and otherwise installs only the virtualenv (none of the real node's Debian
# packages either: MEMORIA_NODE=0). With no arguments (what CI runs), the full bootstrap runs
# first, as always.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

unit_only=0
for arg in "$@"; do
  case $arg in
    -*) ;;  # a pytest option; a separate option value below counts as a path, so as "not unit"
    tests/unit | tests/unit/* | ./tests/unit | ./tests/unit/*) unit_only=1 ;;
    *) unit_only=0 && break ;;
  esac
done
# the stamp hack/bootstrap.sh leaves once .venv holds the project as this pyproject.toml says
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if ((unit_only)) && [[ -f $stamp ]]; then
  echo "== unit tests only and .venv is current: no bootstrap" >&2
elif ((unit_only)); then
  MEMORIA_NODE=0 MEMORIA_BOOTSTRAP_PYTHON_ONLY=1 bash hack/bootstrap.sh
else
  bash hack/bootstrap.sh
fi

echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict" >&2
.venv/bin/mypy
if [[ -f Dockerfile ]]; then
  echo "== hadolint" >&2
  .venv/bin/hadolint Dockerfile
fi
echo "== pytest" >&2
if [[ $# -gt 0 ]]; then
  set +e
  .venv/bin/pytest "$@"
  rc=$?
  set -e
  if [[ $rc -eq 5 ]]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
  fi
  exit $rc
fi

# The whole suite (what CI runs): the real node's tests in a second pytest session beside the
# rest. Both spend most of their time waiting on servers, pods and timers, not on the CPU, so
# side by side they take about as long as the longer one (measured figures: README, "The
# tests"). The node session's output is kept in a log and printed once both are done.
logs=$(mktemp -d)
started=$SECONDS
.venv/bin/pytest -m node --durations=15 >"$logs/node.log" 2>&1 &
node_pid=$!
set +e
.venv/bin/pytest -m "not node" --durations=25
rest=$?
wait "$node_pid"
node=$?
set -e
echo "== pytest -m node (ran beside the rest; $((SECONDS - started)) s for both)" >&2
cat "$logs/node.log"
rm -rf "$logs"
for rc in $rest $node; do
  if [[ $rc -eq 5 ]]; then
    echo "a pytest session collected no tests: that is a failure here" >&2
    exit 1
  fi
done
echo "== pytest: rest exited $rest, node exited $node" >&2
((rest == 0 && node == 0))
