"""The alerts are code: promtool checks and unit-tests every rule, each rule has a case where it
fires and one where it stays quiet, and docs/operations.md's table is generated from them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from testbed.paths import CHART, REPO

RULES = CHART / "files" / "alerts.yaml"
TESTS = REPO / "tests" / "promtool" / "alerts_test.yaml"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing: hack/bootstrap.sh installs Debian's prometheus package")
        pytest.skip("promtool missing: run hack/bootstrap.sh (Debian package prometheus)")
    return found


def _alerts() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["alert"] for group in doc["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    proc = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in proc.stdout


def test_promtool_unit_tests_pass() -> None:
    proc = subprocess.run(
        [_promtool(), "test", "rules", str(TESTS)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test") or []:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == set(_alerts()), set(_alerts()) - fires
    assert quiet == set(_alerts()), set(_alerts()) - quiet


def test_the_docs_table_is_generated_from_the_rules() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen-alert-docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for alert in _alerts():
        assert f"`{alert}`" in (REPO / "docs" / "operations.md").read_text()


def test_the_chart_installs_the_rules_only_when_asked() -> None:
    template = (CHART / "templates" / "prometheusrule.yaml").read_text()
    assert '.Files.Get "files/alerts.yaml"' in template
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["alerts"]["enabled"] is False and values["dashboard"]["enabled"] is False
