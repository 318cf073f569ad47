"""The chart's CRD copy is the CRD: Helm installs charts/memoria/crds/, users apply crds/."""

from __future__ import annotations

from testbed.paths import REPO


def test_chart_crd_is_identical_to_the_source() -> None:
    source = (REPO / "crds" / "memoriaregion.yaml").read_bytes()
    copy = (REPO / "charts" / "memoria" / "crds" / "memoriaregion.yaml").read_bytes()
    assert copy == source, "run: cp crds/memoriaregion.yaml charts/memoria/crds/"


def test_chart_app_version_matches_the_package() -> None:
    import tomllib

    import yaml

    chart = yaml.safe_load((REPO / "charts" / "memoria" / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert f"memoria-operator=={project['version']}" in (REPO / "Dockerfile").read_text()
