"""``python -m testbed up|down`` leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import Binaries

pytestmark = pytest.mark.e2e


def _run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testbed", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={
            **os.environ,
            "HOME": str(home),
            # reuse the binaries already built for this session
            "MEMORIA_BIN_CACHE": str(Path.home() / ".cache" / "memoria-operator" / "bin"),
        },
    )


def test_up_prints_kubeconfig_and_down_cleans_up(binaries: Binaries, tmp_path: Path) -> None:
    up = _run("up", home=tmp_path)
    assert up.returncode == 0, up.stderr
    kubeconfig = Path(up.stdout.strip())
    assert kubeconfig.exists()
    state = json.loads((kubeconfig.parent / "state.json").read_text())
    pids = [p["pid"] for p in state["processes"]]
    assert {p["name"] for p in state["processes"]} == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
    }
    version = subprocess.run(
        [str(binaries.kubectl), "version", "-o", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        check=True,
    )
    assert json.loads(version.stdout)["serverVersion"]["gitVersion"].startswith("v1.")
    # a second up reuses the running one
    again = _run("up", home=tmp_path)
    assert again.stdout.strip() == str(kubeconfig)

    down = _run("down", home=tmp_path)
    assert down.returncode == 0, down.stderr
    assert not kubeconfig.parent.exists()
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert _run("status", home=tmp_path).returncode == 1
