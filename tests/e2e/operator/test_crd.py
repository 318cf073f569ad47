"""The MemoriaRegion CRD on a real API server: samples apply, hostile manifests are refused."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from testbed.cluster import parse_table
from testbed.kube import KubeTarget
from testbed.paths import SAMPLES
from testbed.regions import region_manifest

pytestmark = pytest.mark.e2e


def with_path(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of ``body`` with a dotted path set (value ``DELETE`` removes the key)."""
    out = copy.deepcopy(body)
    node = out
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return out


DELETE = object()
BASE = region_manifest()

# (id, manifest, text the API server's message must contain: it names the field)
HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    (
        "floor-above-ceiling",
        with_path(BASE, "spec.privacy", {"floor": 5, "ceiling": 2}),
        "spec.privacy.floor must be less than or equal to spec.privacy.ceiling",
    ),
    ("privacy-16", with_path(BASE, "spec.privacy", {"ceiling": 16}), "spec.privacy.ceiling"),
    ("privacy-minus-16", with_path(BASE, "spec.privacy", {"floor": -16}), "spec.privacy.floor"),
    ("unknown-backend", with_path(BASE, "spec.sync.backend", "kafka"), "spec.sync.backend"),
    (
        "table-with-redis",
        with_path(BASE, "spec.sync.table", "memoria_sync_events"),
        "spec.sync.table is only allowed with backend postgres",
    ),
    (
        "health-url-cloud-metadata",
        with_path(BASE, "spec.failover", {"healthUrl": "http://169.254.169.254/latest/meta-data"}),
        "spec.failover.healthUrl must not point at a link-local, metadata",
    ),
    (
        "health-url-metadata-name",
        with_path(BASE, "spec.failover", {"healthUrl": "http://user@Metadata.Google.Internal/x"}),
        "spec.failover.healthUrl must not point at a link-local, metadata",
    ),
    (
        "health-url-link-local-v6",
        with_path(BASE, "spec.failover", {"healthUrl": "http://[fe80::1]:8080/healthz"}),
        "spec.failover.healthUrl must not point at a link-local, metadata",
    ),
    (
        "replicas-on-the-embedded-store",
        with_path(BASE, "spec.replicas", 2),
        "spec.replicas above 1 needs a shared store (spec.store.connectionSecretRef)",
    ),
    (
        "claim-size-not-a-quantity",
        with_path(BASE, "spec.store", {"persistence": {"size": "lots"}}),
        "spec.store.persistence.size",
    ),
    (
        "both-connection-sources",
        with_path(BASE, "spec.sync.connectionSecretRef", {"name": "s", "key": "url"}),
        "set exactly one of spec.sync.connectionUrl and spec.sync.connectionSecretRef",
    ),
    (
        "neither-connection-source",
        with_path(BASE, "spec.sync.connectionUrl", DELETE),
        "set exactly one of spec.sync.connectionUrl and spec.sync.connectionSecretRef",
    ),
    (
        "password-in-url",
        with_path(BASE, "spec.sync.connectionUrl", "postgresql://memoria:secret@db:5432/memoria"),
        "spec.sync.connectionUrl must not contain a password",
    ),
    (
        "url-scheme",
        with_path(BASE, "spec.sync.connectionUrl", "http://redis:6379"),
        "spec.sync.connectionUrl must start with",
    ),
    ("role-outside-enum", with_path(BASE, "spec.role", "primary"), "spec.role"),
    ("privacy-wrong-type", with_path(BASE, "spec.privacy", {"floor": "low"}), "spec.privacy.floor"),
    ("replicas-wrong-type", with_path(BASE, "spec.replicas", "three"), "spec.replicas"),
    (
        "realtime-wrong-type",
        with_path(BASE, "spec.sync.realtimeReplication", "yes"),
        "spec.sync.realtimeReplication",
    ),
    ("empty-region", with_path(BASE, "spec.region", ""), "spec.region"),
    ("region-not-dns", with_path(BASE, "spec.region", "EU West"), "spec.region"),
    ("missing-region", with_path(BASE, "spec.region", DELETE), "spec.region"),
    ("missing-sync", with_path(BASE, "spec.sync", DELETE), "spec.sync"),
    ("empty-channel", with_path(BASE, "spec.sync.channel", ""), "spec.sync.channel"),
    (
        "bad-table-name",
        with_path(with_path(BASE, "spec.sync.backend", "postgres"), "spec.sync.table", "x; drop"),
        "spec.sync.table",
    ),
    (
        "empty-secret-name",
        with_path(
            with_path(BASE, "spec.sync.connectionUrl", DELETE),
            "spec.sync.connectionSecretRef",
            {"name": ""},
        ),
        "spec.sync.connectionSecretRef.name",
    ),
    (
        "negative-failover-bound",
        with_path(BASE, "spec.failover", {"unhealthyAfterSeconds": 0}),
        "spec.failover.unhealthyAfterSeconds",
    ),
    (
        "health-url-scheme",
        with_path(BASE, "spec.failover", {"healthUrl": "ftp://x/healthz"}),
        "spec.failover.healthUrl must start with",
    ),
    ("priority-out-of-range", with_path(BASE, "spec.priority", 5000), "spec.priority"),
    (
        "bad-pull-policy",
        with_path(BASE, "spec.imagePullPolicy", "Sometimes"),
        "spec.imagePullPolicy",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "needle"), [(m, n) for _, m, n in HOSTILE], ids=[i for i, _, _ in HOSTILE]
)
def test_hostile_manifest_rejected(
    crd_installed: KubeTarget, namespace: str, manifest: dict[str, Any], needle: str
) -> None:
    proc = crd_installed.apply(manifest, namespace, check=False)
    assert proc.returncode != 0, f"accepted: {yaml.safe_dump(manifest)}"
    assert needle in proc.stderr, proc.stderr
    # nothing was stored
    gone = crd_installed.kubectl("get", "mreg", "r1", "-n", namespace, check=False)
    assert gone.returncode != 0


def test_samples_apply_and_printer_columns(crd_installed: KubeTarget, namespace: str) -> None:
    for sample in ("region-a.yaml", "region-b.yaml"):
        crd_installed.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / sample))
    table = parse_table(crd_installed.kubectl("get", "mreg", "-n", namespace).stdout)
    assert list(table[0]) == ["NAME", "REGION", "ROLE", "BACKEND", "READY", "AGE"]
    rows = {row["NAME"]: row for row in table}
    assert rows["region-a"]["REGION"] == "region-a"
    assert rows["region-b"]["BACKEND"] == "redis"
    assert rows["region-a"]["ROLE"] in {"", "<none>"}  # no operator runs here: no actual role yet
    wide = crd_installed.kubectl("get", "mreg", "-n", namespace, "-o", "wide").stdout
    assert "HOLDER" in wide.splitlines()[0]


def test_defaults_are_applied(crd_installed: KubeTarget, namespace: str) -> None:
    crd_installed.apply(region_manifest("defaults"), namespace)
    spec = crd_installed.get_json("mreg", "defaults", "-n", namespace)["spec"]
    assert spec["role"] == "standby"
    assert spec["group"] == "default"
    assert spec["privacy"] == {"floor": -15, "ceiling": 15}
    assert "channel" not in spec["sync"]  # the runtime's default for the backend (issue 14)
    assert spec["sync"]["enabled"] is True
    assert spec["sync"]["realtimeReplication"] is True
    assert spec["scheduler"] == {
        "timeZone": "UTC",
        "enabled": True,
        "control": "lease",
        "rolloutTimeoutSeconds": 120,
    }
    assert spec["failover"]["unhealthyAfterSeconds"] == 10


def test_backend_is_immutable(crd_installed: KubeTarget, namespace: str) -> None:
    crd_installed.apply(region_manifest("immutable"), namespace)
    changed = region_manifest("immutable")
    changed["spec"]["sync"] = {"backend": "postgres", "connectionUrl": "postgresql://db/memoria"}
    proc = crd_installed.apply(changed, namespace, check=False)
    assert proc.returncode != 0
    assert "spec.sync.backend is immutable" in proc.stderr
    group = region_manifest("immutable", group="other")
    proc = crd_installed.apply(group, namespace, check=False)
    assert "spec.group is immutable" in proc.stderr
    spec = crd_installed.get_json("mreg", "immutable", "-n", namespace)["spec"]
    assert spec["sync"]["backend"] == "redis"
    assert spec["group"] == "default"


def test_unknown_fields_rejected_strict_and_pruned_otherwise(
    crd_installed: KubeTarget, namespace: str
) -> None:
    body = with_path(region_manifest("unknown"), "spec.sync.replicationFactor", 3)
    # kubectl asks for strict field validation by default: the server names the field
    strict = crd_installed.apply(body, namespace, check=False)
    assert strict.returncode != 0
    assert 'unknown field "spec.sync.replicationFactor"' in strict.stderr
    # a client that does not ask for strictness gets the field pruned, never stored
    lax = crd_installed.apply(body, namespace, extra=("--validate=false",))
    assert lax.returncode == 0
    stored = crd_installed.get_json("mreg", "unknown", "-n", namespace)
    assert "replicationFactor" not in stored["spec"]["sync"]


def test_explain_describes_fields(crd_installed: KubeTarget) -> None:
    out = crd_installed.kubectl("explain", "mreg.spec.privacy.floor").stdout
    assert "MEMORIA_SYNC__PRIVACY_FLOOR" in out
    out = crd_installed.kubectl("explain", "mreg.spec.sync.connectionSecretRef").stdout
    assert "Secret" in out


def test_every_schema_field_has_a_description(crd_installed: KubeTarget) -> None:
    crd = crd_installed.get_json("crd", "memoriaregions.memoria.arcafutura.io")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for key, child in node.get("properties", {}).items():
            here = f"{path}.{key}"
            if key != "metadata" and not child.get("description"):
                missing.append(here)
            walk(child, here)
        if "items" in node:
            walk(node["items"], path + "[]")

    walk(schema, "")
    assert missing == []
