"""Every kubectl and helm command in the docs runs as printed, against the test API.

Commands are taken from ```bash blocks of README.md and docs/*.md, in the order of DOC_ORDER,
and run with bash from the repository root while the operator runs and a thread plays the
kubelet (marks the regions' Deployments available). A command that reads state the operator
has yet to write (a Lease, say) is retried for a while before it counts as failed.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from testbed import Binaries
from testbed.cluster import mark_available
from testbed.harness import running_operator
from testbed.kube import KubeTarget
from testbed.paths import REPO
from testbed.plugin import plugin_bin

pytestmark = pytest.mark.e2e
DOC_ORDER = [
    "docs/install.md",
    "docs/leadership.md",
    "docs/sync.md",
    "docs/api.md",
    "docs/operations.md",
    "docs/security.md",
    # its commands are ```sh blocks: they need three clusters (tests/e2e/federation does that)
    "docs/install-across-clusters.md",
    "README.md",
]


def commands(path: Path) -> list[str]:
    found = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        for raw in block.splitlines():
            line = raw.strip()
            if line.startswith(("kubectl ", "helm ")):
                found.append(line)
    return found


def test_every_doc_is_listed() -> None:
    docs = {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")} | {"README.md"}
    assert docs - {"docs/memoriaregion.md"} <= set(DOC_ORDER)


def test_doc_commands_run_as_printed(
    crd_installed: KubeTarget, binaries: Binaries, tmp_path: Path
) -> None:
    kube = crd_installed
    plugin = plugin_bin(tmp_path / "bin")  # `kubectl memoria ...` as a user has it on PATH
    env = {
        **os.environ,
        "KUBECONFIG": str(kube.kubeconfig),
        "PATH": f"{binaries.kubectl.parent}:{binaries.helm.parent}:{plugin}:{os.environ['PATH']}",
    }
    stop = threading.Event()

    def kubelet() -> None:
        marked: set[str] = set()
        while not stop.wait(0.5):
            out = kube.kubectl("get", "deployments", "-n", "memoria", "-o", "name", check=False)
            for name in out.stdout.split():
                dep = name.split("/", 1)[1]
                if dep not in marked and dep.startswith("memoria-"):
                    mark_available(kube, "memoria", dep)
                    marked.add(dep)

    ran: list[str] = []
    with running_operator(kube):
        thread = threading.Thread(target=kubelet, daemon=True)
        thread.start()
        try:
            for doc in DOC_ORDER:
                for command in commands(REPO / doc):
                    deadline = time.monotonic() + 30
                    while True:
                        proc = subprocess.run(
                            ["bash", "-c", command],
                            cwd=REPO,
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=120,
                            check=False,
                        )
                        if proc.returncode == 0 or time.monotonic() > deadline:
                            break
                        time.sleep(1)
                    assert proc.returncode == 0, f"{doc}: {command}\n{proc.stderr}"
                    ran.append(command)
        finally:
            stop.set()
            thread.join(5)
            subprocess.run(
                ["bash", "-c", "helm uninstall memoria -n memoria-system"],
                env=env,
                capture_output=True,
                check=False,
            )
    assert len(ran) >= 12, ran
