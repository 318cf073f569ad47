"""What ships: the wheel holds the product packages (runtime, operator, kubectl plugin) and
nothing of the test bed, and the operator's package stays clear of the region runtime's HTTP
stack."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from testbed.paths import REPO, run_python


def test_the_wheel_holds_the_product_and_no_test_bed(tmp_path: Path) -> None:
    # pip builds it as any installer would: in isolation, with the hatchling pyproject asks for
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "memoria",
        "memoria_operator",
        "kubectl_memoria",
        f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info",
    }
    assert not [n for n in names if "testbed" in n or "demo" in n or n.startswith("tests/")]
    assert "memoria/py.typed" in names and "memoria_operator/py.typed" in names
    assert "kubectl_memoria/py.typed" in names


def test_importing_the_operator_does_not_load_fastapi() -> None:
    proc = run_python(
        "import sys, memoria_operator; assert 'fastapi' not in sys.modules, 'fastapi loaded'"
    )
    assert proc.returncode == 0, proc.stderr


def test_the_kubectl_plugin_loads_neither_kubernetes_nor_kopf() -> None:
    # its answer time is mostly import time: the kubernetes package alone takes seconds
    proc = run_python(
        "import sys, kubectl_memoria.cli, kubectl_memoria.report\n"
        "heavy = {'kubernetes', 'kopf', 'fastapi', 'pydantic'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    assert proc.returncode == 0, proc.stderr


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = version.strip()
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(extras: set[str]) -> set[str]:
    """The distributions the project with ``extras`` needs, transitively, as installed here."""
    from packaging.requirements import Requirement

    wanted: set[str] = set()
    todo = [("memoria-operator", frozenset(extras))]
    while todo:
        name, with_extras = todo.pop()
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            env_extras = with_extras or {""}
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in env_extras):
                continue
            key = canonical(req.name)
            if key not in wanted:
                wanted.add(key)
                todo.append((req.name, frozenset(req.extras)))
    return wanted


def test_the_tests_run_what_the_locks_pin() -> None:
    """The image's runtime lock and the test tools' lock pin disjoint sets, everything the
    project and its test tools need is pinned in one of them, and the venv the tests run in
    holds exactly those versions (bootstrap installs with both as constraints), so a release on
    PyPI cannot change CI or make the tests differ from the image."""
    runtime = _pins(REPO / "docker" / "requirements.lock")
    tools = _pins(REPO / "hack" / "test-tools.lock")
    assert runtime and tools and not set(runtime) & set(tools)
    pinned = runtime | tools
    unpinned = _closure({"test"}) - set(pinned)
    assert not unpinned, f"needed but pinned nowhere: {sorted(unpinned)}"
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {n: (v, installed.get(n)) for n, v in pinned.items() if installed.get(n) != v}
    assert not wrong, (
        f"pinned vs installed: {wrong}; a fresh venv holds the pins: "
        "rm -rf .venv && bash hack/bootstrap.sh"
    )
