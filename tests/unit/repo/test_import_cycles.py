"""hack/check-import-cycles.py: the project has no import cycle, and the checker finds one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CHECKER = REPO / "hack" / "check-import-cycles.py"


def _check(*package_dirs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECKER), *map(str, package_dirs)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_project_has_no_import_cycle() -> None:
    result = _check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("no import cycles among ")


# (package files, the cycle expected or None): each a small package written to a tmp dir
CASES = {
    "a cycle is reported with its path": (
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .b import B\nA = 1\n",
            "pkg/b.py": "import pkg.c\nB = 1\n",
            "pkg/c.py": "from pkg import a\n",
        },
        "pkg.a -> pkg.b -> pkg.c -> pkg.a",
    ),
    "imports that do not run at load time do not count": (
        {
            "pkg/__init__.py": "",
            "pkg/a.py": """\
                from typing import TYPE_CHECKING

                from .b import B

                if TYPE_CHECKING:
                    from .b import Other
            """,
            "pkg/b.py": """\
                import typing

                if typing.TYPE_CHECKING:
                    from .a import A

                def later():
                    from . import a
                    return a

                B = 1
            """,
        },
        None,
    ),
    # pkg.store imports pkg.sync.events, which runs pkg/sync/__init__.py, which imports back
    "a submodule import loads its package": (
        {
            "pkg/__init__.py": "",
            "pkg/store.py": "from .sync.events import E\n",
            "pkg/sync/__init__.py": "from .relay import R\n",
            "pkg/sync/events.py": "E = 1\n",
            "pkg/sync/relay.py": "from ..store import S\n",
        },
        "pkg.store -> pkg.sync -> pkg.sync.relay -> pkg.store",
    ),
    "modules of one package may import their own package": (
        {
            "pkg/__init__.py": "",
            "pkg/sync/__init__.py": "from .base import Base\nfrom .memory import Memory\n",
            "pkg/sync/base.py": "Base = 1\n",
            "pkg/sync/memory.py": "from .base import Base\nfrom . import base\nMemory = 1\n",
        },
        None,
    ),
}


@pytest.mark.parametrize(("files", "cycle"), CASES.values(), ids=CASES.keys())
def test_the_checker_on_small_packages(
    tmp_path: Path, files: dict[str, str], cycle: str | None
) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    result = _check(tmp_path / "pkg")
    if cycle is None:
        assert result.returncode == 0, result.stdout
    else:
        assert result.returncode == 1
        assert f"import cycle: {cycle}" in result.stdout.splitlines()
