"""docs/memoriaregion.md is generated from the CRD and must not drift from it."""

from __future__ import annotations

import subprocess
import sys

from testbed.paths import REPO


def test_crd_reference_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen-crd-docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
