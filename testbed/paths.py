"""Where the test bed finds the repository's files (the build script, the CRD, the chart).

The test bed is never installed: it lives at the repository's top level and is imported from a
checkout (an editable install puts the checkout on ``sys.path``). So the repository is simply
this package's parent, checked once here instead of guessed in every module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not (REPO / "pyproject.toml").is_file() or not (REPO / "crds").is_dir():
    raise ImportError(
        f"testbed must be imported from a memoria-operator checkout; {REPO} is not one "
        "(it ships in no wheel or image)"
    )

BUILD_SCRIPT = REPO / "hack" / "build-k8s-binaries.sh"
CRD = REPO / "crds" / "memoriaregion.yaml"
SAMPLES = REPO / "crds" / "samples"
CHART = REPO / "charts" / "memoria"


def run_python(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in a fresh interpreter that imports this checkout's packages first,
    whatever else is installed (the checkout and its ``operator/`` folder lead ``PYTHONPATH``);
    run from the checkout, output captured as text, the exit code left to the caller."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(REPO / "operator"), env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
