"""Fixtures of the e2e tests that run a region bed (leadership, plugin, dashboard)."""

from __future__ import annotations

from functools import partial

import pytest

from testbed.harness import OperatorRun, running_operator
from testbed.kube import KubeTarget


@pytest.fixture
def operator(crd_installed: KubeTarget) -> OperatorRun:
    """For ``region_bed(..., operator=operator)``: the operator runs in this process for the
    bed's lifetime."""
    return partial(running_operator, crd_installed)
