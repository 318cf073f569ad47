"""The Helm chart on the real control plane: lint, schema, install/upgrade/uninstall, and least
privilege proven by running the operator with the chart's ServiceAccount."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import Binaries, ManagedProcess, wait_until
from testbed.cluster import condition, get, mark_available, secret, start_operator
from testbed.harness import OPERATOR_ENV, helm_timing_flags, running_operator
from testbed.kube import KubeTarget
from testbed.paths import CHART
from testbed.regions import LEASE, region_manifest

pytestmark = pytest.mark.e2e


def helm(
    kube: KubeTarget, binaries: Binaries, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(binaries.helm), *args],
        capture_output=True,
        text=True,
        env=kube.env,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {proc.stderr}")
    return proc


def test_lint_and_template_are_clean(kube: KubeTarget, binaries: Binaries) -> None:
    lint = helm(kube, binaries, "lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in lint.stdout
    rendered = helm(
        kube,
        binaries,
        "template",
        "demo",
        str(CHART),
        "-n",
        "memoria-system",
        "--set",
        "regions[0].name=region-a",
        "--set",
        "regions[0].spec.region=a",
        "--set",
        "regions[0].spec.sync.backend=redis",
        "--set",
        "regions[0].spec.sync.connectionUrl=redis://r:6379/0",
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "Deployment",
        "MemoriaRegion",
        "Service",
        "ServiceAccount",
    ]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    sc = pod["containers"][0]["securityContext"]
    assert sc == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for role in (d for d in docs if d["kind"] == "ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]


def test_alerts_and_dashboard_render_when_enabled(kube: KubeTarget, binaries: Binaries) -> None:
    rendered = helm(
        kube,
        binaries,
        "template",
        "obs",
        str(CHART),
        "-n",
        "memoria-system",
        "--set",
        "alerts.enabled=true",
        "--set",
        "alerts.labels.release=prometheus",
        "--set",
        "dashboard.enabled=true",
        "--set",
        "dashboard.annotations.grafana_folder=Memoria",
    ).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(rendered) if d}
    rule = docs["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    dashboard = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Memoria"}
    assert json.loads(dashboard["data"]["memoria.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text()
    )
    # off by default
    plain = helm(kube, binaries, "template", "obs", str(CHART)).stdout
    assert "PrometheusRule" not in plain and "grafana_dashboard" not in plain


@pytest.mark.parametrize(
    ("flag", "needle"),
    [
        ("operator.replicas=0", "/operator/replicas"),
        ("operator.lease.durationSeconds=abc", "/operator/lease/durationSeconds"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("operator.colour=blue", "'colour' not allowed"),
        ("metrics.port=80", "/metrics/port"),
        ("regions[0].name=UPPER", "/regions/0"),
        ("alerts.enabled=maybe", "/alerts/enabled"),
        ("dashboard.colour=blue", "'colour' not allowed"),
    ],
)
def test_bad_values_are_refused_naming_the_value(
    kube: KubeTarget, binaries: Binaries, flag: str, needle: str
) -> None:
    proc = helm(kube, binaries, "template", "bad", str(CHART), "--set", flag, check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr


@pytest.fixture
def release(crd_installed: KubeTarget, binaries: Binaries) -> Iterator[tuple[str, str]]:
    name = f"m{uuid.uuid4().hex[:6]}"
    namespace = f"{name}-system"
    helm(
        crd_installed,
        binaries,
        "install",
        name,
        str(CHART),
        "-n",
        namespace,
        "--create-namespace",
        *helm_timing_flags(),
    )
    yield name, namespace
    helm(crd_installed, binaries, "uninstall", name, "-n", namespace, check=False)


def test_install_upgrade_uninstall(crd_installed: KubeTarget, binaries: Binaries) -> None:
    kube = crd_installed
    name = f"m{uuid.uuid4().hex[:6]}"
    ns = f"{name}-system"
    region_values = [
        "--set",
        "regions[0].name=region-a",
        "--set",
        "regions[0].spec.region=a",
        "--set",
        "regions[0].spec.role=leader",
        "--set",
        "regions[0].spec.sync.backend=redis",
        "--set",
        "regions[0].spec.sync.connectionUrl=redis://r:6379/0",
    ]
    out = helm(
        kube, binaries, "install", name, str(CHART), "-n", ns, "--create-namespace", *region_values
    ).stdout
    assert "kubectl get mreg -A -w" in out  # NOTES tell the user what to do next
    operator = f"{name}-memoria-operator"
    dep = get(kube, "deployment", operator, ns)
    assert dep is not None and get(kube, "serviceaccount", operator, ns) is not None
    assert get(kube, "mreg", "region-a", ns) is not None
    generation = dep["metadata"]["generation"]
    helm(
        kube,
        binaries,
        "upgrade",
        name,
        str(CHART),
        "-n",
        ns,
        *region_values,
        "--set",
        "operator.resyncSeconds=45",
    )
    dep = get(kube, "deployment", operator, ns)
    assert dep["metadata"]["generation"] > generation  # the pod template changed: a rollout
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MEMORIA_OPERATOR_RESYNC_SECONDS"] == "45"
    helm(kube, binaries, "uninstall", name, "-n", ns)
    for kind, obj, where in (
        ("deployment", operator, ns),
        ("serviceaccount", operator, ns),
        ("service", f"{name}-memoria-metrics", ns),
        ("mreg", "region-a", ns),
    ):
        wait_until(
            lambda k=kind, o=obj, w=where: get(kube, k, o, w) is None, 30, f"{kind} {obj} removed"
        )
    for kind in ("clusterrole", "clusterrolebinding"):
        for suffix in ("framework", "application"):
            gone = kube.kubectl("get", kind, f"{operator}-{suffix}", check=False)
            assert gone.returncode != 0
    # kept on purpose: the CRD (deleting it would delete every region in the cluster)
    assert kube.kubectl("get", "crd", "memoriaregions.memoria.arcafutura.io").returncode == 0


def _run_operator(
    kube: KubeTarget, kubeconfig: Path, release_ns: str, release: str, watch_ns: str, log: Path
) -> ManagedProcess:
    env = {
        **OPERATOR_ENV,
        "MEMORIA_OPERATOR_ELECTION_NAMESPACE": release_ns,
        "MEMORIA_OPERATOR_ELECTION_LEASE_NAME": f"{release}-memoria-operator",
    }
    return start_operator(kubeconfig, log, env, "-n", watch_ns)


def _region_status(kube: KubeTarget, ns: str, name: str) -> dict[str, Any]:
    return dict((get(kube, "mreg", name, ns) or {}).get("status") or {})


def _holder(kube: KubeTarget, ns: str) -> str | None:
    holder: str | None = ((get(kube, "lease", LEASE, ns) or {}).get("spec") or {}).get(
        "holderIdentity"
    )
    return holder


def _first_missing(steps: list[tuple[str, Any]], deadline: float) -> str | None:
    """Wait for each step in turn, all within ``deadline``; the first that did not happen."""
    for what, check in steps:
        try:
            wait_until(check, max(0.1, deadline - time.monotonic()), what)
        except AssertionError:
            return what
    return None


def _scenario(kube: KubeTarget, ns: str, timeout: float) -> str | None:
    """Operator I and II in brief; returns what did not happen, or None."""
    secret(kube, ns, "sync-url", url="redis://:pw@redis:6379/0")
    for name, role in (("region-a", "leader"), ("region-b", "standby")):
        sync = {"backend": "redis", "connectionSecretRef": {"name": "sync-url"}}
        kube.apply(region_manifest(name, role=role, sync=sync), ns)
    deadline = time.monotonic() + timeout
    missing = _first_missing(
        [
            (
                "owned objects",
                lambda: all(
                    get(kube, k, "memoria-region-a", ns)
                    for k in ("deployment", "service", "serviceaccount", "role", "rolebinding")
                ),
            ),
            (
                "secrets checked",
                lambda: (
                    (condition(get(kube, "mreg", "region-a", ns), "SecretsAvailable") or {}).get(
                        "status"
                    )
                    == "True"
                ),
            ),
        ],
        deadline,
    )
    if missing:
        return missing
    for name in ("region-a", "region-b"):
        mark_available(kube, ns, f"memoria-{name}")
    missing = _first_missing(
        [
            (
                "Ready",
                lambda: (
                    (condition(get(kube, "mreg", "region-a", ns), "Ready") or {}).get("status")
                    == "True"
                ),
            ),
            ("Lease bootstrap", lambda: _holder(kube, ns) == f"{ns}/region-a"),
            (
                "Events",
                lambda: (
                    "Created"
                    in kube.kubectl(
                        "get", "events", "-n", ns, "--field-selector=involvedObject.name=region-a"
                    ).stdout
                ),
            ),
            # The operator answers a promotion once, and refuses one of a region it has not yet
            # seen healthy; so ask only once it has recorded region-b's health (under load the
            # leadership loop can see region-b's Deployment available well after region-a's).
            (
                "region-b seen healthy",
                lambda: (_region_status(kube, ns, "region-b").get("health") or {}).get("healthy"),
            ),
        ],
        deadline,
    )
    if missing:
        return missing
    kube.kubectl(
        "annotate",
        "mreg",
        "region-b",
        "-n",
        ns,
        "--overwrite",
        f"memoria.arcafutura.io/promote={time.time()}",
    )
    return _first_missing([("switchover", lambda: _holder(kube, ns) == f"{ns}/region-b")], deadline)


@pytest.mark.slow
def test_least_privilege(
    crd_installed: KubeTarget, release: tuple[str, str], tmp_path: Path
) -> None:
    kube = crd_installed
    name, release_ns = release
    sa = f"{name}-memoria-operator"
    kubeconfig = kube.token_kubeconfig(sa, release_ns, tmp_path / "operator.kubeconfig")
    # the chart's identity is really limited: no Secrets in its own namespace beyond get
    denied = kube.kubectl(
        "delete", "secret", "x", "-n", release_ns, kubeconfig=kubeconfig, check=False
    )
    assert "forbidden" in denied.stderr.lower()

    def run(tag: str, timeout: float) -> str | None:
        ns = kube.create_namespace(tag)
        proc = _run_operator(kube, kubeconfig, release_ns, name, ns, tmp_path / f"{tag}.log")
        try:
            return _scenario(kube, ns, timeout)
        finally:
            proc.stop()

    assert run("lp-full", 60) is None, (tmp_path / "lp-full.log").read_text()[-3000:]
    # and it needed nothing more: kopf retries (and then works around) a request the chart's
    # RBAC refuses, so a missing grant shows as a 403 in the log rather than as a failure
    log = (tmp_path / "lp-full.log").read_text()
    assert "forbidden" not in log.lower(), log[-3000:]
    assert not re.search(r"\b403\b", log), log[-3000:]

    application = f"{sa}-application"
    original = json.loads(kube.kubectl("get", "clusterrole", application, "-o", "json").stdout)
    framework = f"{sa}-framework"
    original_fw = json.loads(kube.kubectl("get", "clusterrole", framework, "-o", "json").stdout)
    removals = [
        (application, original, lambda r: r["resources"] == ["secrets"]),
        (application, original, lambda r: r["resources"] == ["deployments"]),
        (application, original, lambda r: r["resources"] == ["memoriaregions/status"]),
        (application, original, lambda r: r["resources"] == ["leases"]),
        (framework, original_fw, lambda r: r["resources"] == ["events"]),
    ]
    for i, (role, source, match) in enumerate(removals):
        kept = [r for r in source["rules"] if not match(r)]
        assert len(kept) == len(source["rules"]) - 1
        kube.kubectl(
            "patch", "clusterrole", role, "--type=merge", "-p", json.dumps({"rules": kept})
        )
        try:
            failed = run(f"lp-cut{i}", 15)
            assert failed is not None, f"still works without {role} rule #{i}"
        finally:
            kube.kubectl(
                "patch",
                "clusterrole",
                role,
                "--type=merge",
                "-p",
                json.dumps({"rules": source["rules"]}),
            )


def test_region_service_account_is_limited(crd_installed: KubeTarget, namespace: str) -> None:
    kube = crd_installed
    for name in ("region-a", "region-b"):
        kube.apply(region_manifest(name), namespace)
    with running_operator(kube):
        wait_until(lambda: get(kube, "rolebinding", "memoria-region-a", namespace), what="rbac")
    who = f"system:serviceaccount:{namespace}:memoria-region-a"

    def can(*args: str) -> bool:
        out = kube.kubectl("auth", "can-i", *args, "-n", namespace, f"--as={who}", check=False)
        return out.stdout.strip() == "yes"

    assert can("get", "leases/memoria-scheduler-default")
    assert can("watch", "leases/memoria-scheduler-default")
    # issue 15: a region's identity asks for promotion through its own ConfigMap and can no
    # longer write its MemoriaRegion (its image and Secret references are not the pod's to set)
    assert not can("patch", "memoriaregions.memoria.arcafutura.io/region-a")
    assert can("patch", "configmaps/memoria-region-a-promote")
    assert not can("patch", "configmaps/memoria-region-b-promote")
    assert not can("update", "leases/memoria-scheduler-default")
    assert not can("create", "leases")
    assert not can("patch", "memoriaregions.memoria.arcafutura.io/region-b")
    assert not can("get", "secrets")
    assert not can("get", "leases/some-other-lease")
