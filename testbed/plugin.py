"""``kubectl memoria`` as a user runs it: a real kubectl that finds ``kubectl-memoria`` on PATH.

The console script pip installs runs whatever copy of the package is installed; the tests, the
demo and the benchmark want this checkout's code, so :func:`plugin_bin` writes a
``kubectl-memoria`` of its own that runs ``python -m kubectl_memoria`` from the checkout, in a
directory that :func:`kubectl_memoria` puts first on PATH. kubectl itself does the discovery.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .kube import KubeTarget
from .paths import REPO


def plugin_bin(directory: Path) -> Path:
    """``directory`` holding an executable ``kubectl-memoria`` that runs this checkout's code."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "kubectl-memoria"
    script.write_text(
        "#!/bin/sh\n"
        f'PYTHONPATH="{REPO}:{REPO / "operator"}${{PYTHONPATH:+:$PYTHONPATH}}" '
        f'exec "{sys.executable}" -m kubectl_memoria "$@"\n'
    )
    script.chmod(0o755)
    return directory


def kubectl_memoria(
    kube: KubeTarget,
    bin_dir: Path,
    *args: str,
    timeout: float = 120,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``kubectl memoria <args>`` through the real kubectl, plugin found on PATH; output
    captured (so not a terminal: no colour), the exit code left to the caller."""
    env = {
        **kube.env,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [str(kube.kubectl_path), "memoria", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
