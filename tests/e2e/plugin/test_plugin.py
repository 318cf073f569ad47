"""``kubectl memoria`` through a real kubectl, against the test bed: two regions (real
``memoria serve`` processes), the operator, a real API server.

On the process bed the API server's service proxy cannot reach the regions (they listen on
loopback, which kube-apiserver never proxies to), so the plugin reads each region's
``/healthz`` from its ``spec.failover.healthUrl`` and says so; on a cluster with pods it goes
through the proxy.
"""

from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.harness import OperatorRun
from testbed.kube import KubeTarget
from testbed.plugin import kubectl_memoria
from testbed.processes import wait_until
from testbed.regions import region_bed, region_manifest

pytestmark = pytest.mark.e2e


def _status(kube: KubeTarget, plugin_dir: Path, namespace: str) -> list[dict[str, Any]]:
    proc = kubectl_memoria(kube, plugin_dir, "status", "-n", namespace, "-o", "json")
    assert proc.returncode in (0, 1), proc.stderr
    groups: list[dict[str, Any]] = json.loads(proc.stdout)
    return groups


def test_kubectl_finds_the_plugin(crd_installed: KubeTarget, plugin_dir: Path) -> None:
    proc = kubectl_memoria(crd_installed, plugin_dir, "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("status", "promote", "fence", "unfence", "report"):
        assert command in proc.stdout
    # nothing to show: exit 3 and a sentence, not a traceback
    empty = crd_installed.create_namespace("plugin-empty")
    proc = kubectl_memoria(crd_installed, plugin_dir, "status", "-n", empty)
    assert proc.returncode == 3 and "no MemoriaRegions" in proc.stderr
    # an API server that does not answer: exit 4, naming the server
    bad = plugin_dir.parent / "bad.kubeconfig"
    doc = yaml.safe_load(crd_installed.kubeconfig.read_text())
    doc["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    bad.write_text(yaml.safe_dump(doc))
    proc = kubectl_memoria(crd_installed, plugin_dir, "status", "--kubeconfig", str(bad))
    assert proc.returncode == 4 and "127.0.0.1:1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_promote_fence_unfence(
    crd_installed: KubeTarget,
    namespace: str,
    tmp_path: Path,
    operator: OperatorRun,
    plugin_dir: Path,
) -> None:
    kube = crd_installed
    with region_bed(kube, namespace, tmp_path, operator=operator) as bed:
        bed.wait_leader("region-a")
        wait_until(
            lambda: all(
                r["health"] == "ok" and r["ready"] == "True"
                for r in _status(kube, plugin_dir, namespace)[0]["regions"]
            ),
            30,
            "both regions Ready and healthy in the plugin's view",
            interval=0.5,  # each look is a Python process: a busy loop would take a core
        )

        # the table: who leads, and one row per region; no colour when not on a terminal
        table = kubectl_memoria(kube, plugin_dir, "status", "-n", namespace)
        assert table.returncode == 0, table.stdout + table.stderr
        assert f"Group default in {namespace}: leader region-a" in table.stdout
        assert "\033[" not in table.stdout
        rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[3:5]}
        assert rows["region-a"][1:5] == ["leader", "True", "no", "ok"]
        assert rows["region-b"][1:5] == ["standby", "True", "no", "ok"]

        (group,) = _status(kube, plugin_dir, namespace)
        assert group["leader"] == "region-a" and group["problems"] == []
        token = group["fencing_token"]
        assert token >= 1 and group["last_transition_reason"] == "Bootstrap"
        assert 0 <= group["lease_renew_age_seconds"] < 5
        for region in group["regions"]:
            assert region["health_via"] == "healthUrl"  # loopback: the proxy refuses, said so
            assert "service proxy answered 503" in region["health_error"]
            assert region["sync_state"] == "ok" and region["outbox_depth"] == 0

        # yaml says the same
        as_yaml = kubectl_memoria(kube, plugin_dir, "status", "-n", namespace, "-o", "yaml")
        assert yaml.safe_load(as_yaml.stdout)[0]["leader"] == "region-a"

        # a switchover, with the Events that answered it
        proc = kubectl_memoria(kube, plugin_dir, "promote", "region-b", "-n", namespace)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "promote region-b: done" in proc.stdout
        assert "SwitchoverStarted" in proc.stdout
        wait_until(lambda: bed.leading("region-b") is True, 20, "region-b's scheduler to lead")
        (group,) = _status(kube, plugin_dir, namespace)
        assert group["leader"] == "region-b" and group["fencing_token"] > token
        assert group["last_transition_reason"] == "Switchover"

        # fence the leader: leadership moves away, and a promotion of it is refused (exit 1)
        proc = kubectl_memoria(kube, plugin_dir, "fence", "region-b", "-n", namespace, "-o", "json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        fenced = json.loads(proc.stdout)
        assert fenced["result"] == "done"
        # the fenced leader's release answers first; the other's acquisition may follow
        reasons = {e["reason"] for e in fenced["events"]}
        assert reasons & {"LeadershipReleased", "LeadershipAcquired"}, reasons
        wait_until(
            lambda: _status(kube, plugin_dir, namespace)[0]["leader"] == "region-a",
            20,
            "region-a leading after the fence",
            interval=0.5,
        )
        (group,) = _status(kube, plugin_dir, namespace)
        assert {r["name"]: r["fenced"] for r in group["regions"]} == {
            "region-a": False,
            "region-b": True,
        }
        proc = kubectl_memoria(kube, plugin_dir, "promote", "region-b", "-n", namespace)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "refused" in proc.stdout and "PromotionRefused" in proc.stdout

        proc = kubectl_memoria(kube, plugin_dir, "unfence", "region-b", "-n", namespace)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (group,) = _status(kube, plugin_dir, namespace)
        assert not any(r["fenced"] for r in group["regions"])
        assert group["leader"] == "region-a"  # no automatic failback

        proc = kubectl_memoria(kube, plugin_dir, "promote", "region-z", "-n", namespace)
        assert proc.returncode == 3 and "not found" in proc.stderr

        # a region that stops answering is a problem: exit 1, and the table says which
        bed.processes["region-b"].kill()
        proc = kubectl_memoria(kube, plugin_dir, "status", "-n", namespace)
        assert proc.returncode == 1
        assert "region-b: /healthz unreachable" in proc.stdout


SECRET_URL = "redis://memoria:Sup3r-S3cret-Pa55@redis-a:6379/0"
API_KEY = "api-key-0123456789-do-not-leak"


def test_report_bundle_keeps_secrets_out(
    crd_installed: KubeTarget,
    namespace: str,
    tmp_path: Path,
    operator: OperatorRun,
    plugin_dir: Path,
) -> None:
    kube = crd_installed
    # applied with kubectl apply, so the Secret carries a last-applied copy of its values
    for name, key, value in (("sync-url", "url", SECRET_URL), ("api-key", "key", API_KEY)):
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name},
                "stringData": {key: value},
            },
            namespace,
        )
    region = region_manifest("region-s", apiKeySecretRef={"name": "api-key", "key": "key"})
    del region["spec"]["sync"]["connectionUrl"]
    region["spec"]["sync"]["connectionSecretRef"] = {"name": "sync-url", "key": "url"}
    kube.apply(region, namespace)
    # a user's mistake the bundle must survive: the URL pasted into a labelled ConfigMap
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "notes", "labels": {"app.kubernetes.io/name": "memoria"}},
            "data": {"broker": SECRET_URL, "hint": f"the key is {API_KEY}"},
        },
        namespace,
    )
    with operator():
        wait_until(
            lambda: (
                kube.kubectl(
                    "get", "deployment", "memoria-region-s", "-n", namespace, check=False
                ).returncode
                == 0
            ),
            30,
            "the operator to render region-s",
        )
        out = tmp_path / "bundle.tar.gz"
        proc = kubectl_memoria(
            kube, plugin_dir, "report", "-n", namespace, "-f", str(out), "-o", "json"
        )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["file"] == str(out)

    with tarfile.open(out) as tar:
        files = {
            m.name.removeprefix("memoria-report/"): tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    # what a support request needs is there
    for name in (
        "memoriaregions.yaml",
        "deployments.yaml",
        "configmaps.yaml",
        "events.yaml",
        "leases.yaml",
        "status.json",
        "index.json",
        "secrets/sync-url.yaml",
        "secrets/api-key.yaml",
        "healthz/region-s.json",
    ):
        assert name in files, sorted(files)
    assert "region-s" in files["memoriaregions.yaml"]
    assert "memoria-region-s" in files["deployments.yaml"]
    assert yaml.safe_load(files["secrets/sync-url.yaml"])["keys"] == ["url"]
    assert "logs/operator" in json.loads(files["index.json"])["not_collected"]
    # and no secret, in any form, anywhere
    everything = "\n".join(files.values())
    for secret in (SECRET_URL, "Sup3r-S3cret-Pa55", API_KEY):
        assert secret not in everything
        assert base64.b64encode(secret.encode()).decode() not in everything
    assert "<redacted>" in files["configmaps.yaml"]
    assert oct(out.stat().st_mode & 0o777) == "0o600"
