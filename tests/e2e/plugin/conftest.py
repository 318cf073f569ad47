"""Fixtures of the plugin tests: kubectl finds this checkout's ``kubectl-memoria`` on PATH."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.plugin import plugin_bin


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plugin_bin(tmp_path_factory.mktemp("plugin-bin"))
