#!/usr/bin/env bash
# The main job: install everything (hack/bootstrap.sh), then run the local multi-region demo.
# Extra arguments go to the demo (e.g. --keep).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash hack/bootstrap.sh
exec .venv/bin/python -m testbed.demo "$@"
