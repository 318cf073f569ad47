"""Where the test bed finds the repository's files (the build script, the CRD, the chart).

The test bed is never installed: it lives at the repository's top level and is imported from a
checkout (an editable install puts the checkout on ``sys.path``). So the repository is simply
this package's parent, checked once here instead of guessed in every module.
"""

from __future__ import annotations

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
