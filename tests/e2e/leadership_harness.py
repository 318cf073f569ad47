"""The two-region bed of testbed.regions, with the in-process operator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed.kube import KubeTarget
from testbed.regions import (  # noqa: F401 - re-exported for the tests
    LEASE,
    LeadershipSampler,
    RegionBed,
    leadership_log,
    region_manifest,
)
from testbed.regions import region_bed as _region_bed
from tests.e2e.operator_harness import running_operator


@contextmanager
def region_bed(
    kube: KubeTarget, namespace: str, tmp: Path, *, operator: bool = True, **kwargs: Any
) -> Iterator[RegionBed]:
    factory = (lambda: running_operator(kube)) if operator else None
    with _region_bed(kube, namespace, tmp, operator=factory, **kwargs) as bed:
        yield bed
