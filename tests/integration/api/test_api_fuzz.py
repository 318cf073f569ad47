"""The HTTP API fuzzed from its own OpenAPI document by schemathesis (boundary values, then
random generation, then stateful sequences), against a real ``memoria serve``: whatever a
client sends, the answer is never a server error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import MemoriaProcess

pytestmark = pytest.mark.integration


def test_no_input_makes_a_server_error(tmp_path: Path) -> None:
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    region = MemoriaProcess("fuzz", {"MEMORIA_API_KEY": "k"}, workdir=tmp_path)
    region.start()
    try:
        proc = subprocess.run(
            [
                cli,
                "run",
                f"{region.url}/openapi.json",
                "-H",
                "X-API-Key: k",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "50",
                "--seed",
                "20261126",
                "--exclude-path",
                "/admin/promote",
            ],  # needs a Kubernetes API: tested elsewhere
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    finally:
        region.stop()
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "generated" in proc.stdout
    assert "Exception in ASGI application" not in region.log_path.read_text()
