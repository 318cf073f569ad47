#!/usr/bin/env bash
# Install everything (hack/bootstrap.sh), then run every check: ruff, mypy --strict, hadolint on
# the Dockerfile, and the whole pytest suite (unit, integration on real Redis/PostgreSQL, e2e on a
# local Kubernetes control plane). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash hack/bootstrap.sh

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
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit $rc
