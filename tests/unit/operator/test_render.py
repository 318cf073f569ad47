"""The MemoriaRegion model and the pure rendering of what a region owns."""

from __future__ import annotations

import copy
import os
from typing import Any

import pydantic
import pytest
import yaml

from memoria.contract import SYNC_URL_SCHEMES
from memoria.settings import SyncBackendName, load_settings
from memoria_operator import render
from memoria_operator.model import Region, RegionSpec, SecretKeyRef, config_problems
from testbed.paths import REPO

CRD = REPO / "crds" / "memoriaregion.yaml"
DEFAULT_IMAGE = "registry.example/memoria:9.9.9"


def body(
    name: str = "region-a",
    namespace: str = "prod",
    *,
    spec: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    uid: str = "uid-1234",
    generation: int = 3,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "namespace": namespace,
        "name": name,
        "uid": uid,
        "generation": generation,
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    if annotations is not None:
        meta["annotations"] = annotations
    out: dict[str, Any] = {
        "apiVersion": "memoria.arcafutura.io/v1alpha1",
        "kind": "MemoriaRegion",
        "metadata": meta,
        "spec": spec
        if spec is not None
        else {
            "region": "eu-west-1",
            "sync": {"backend": "redis", "connectionUrl": "redis://r:6379/0"},
        },
    }
    if status is not None:
        out["status"] = status
    return out


def region(**kwargs: Any) -> Region:
    return Region.from_body(body(**kwargs))


FULL_SPEC: dict[str, Any] = {
    "region": "us-east-1",
    "role": "leader",
    "group": "payments",
    "priority": 250,
    "image": "registry.example/memoria:1.2.3",
    "imagePullPolicy": "Always",
    "replicas": 3,
    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    "sync": {
        "enabled": True,
        "backend": "postgres",
        "connectionSecretRef": {"name": "sync-db", "key": "dsn"},
        "channel": "memoria_sync",
        "table": "infra.memoria_sync_events",
        "realtimeReplication": False,
    },
    "privacy": {"floor": -5, "ceiling": 10},
    "scheduler": {"timeZone": "America/New_York", "enabled": True},
    "store": {"connectionSecretRef": {"name": "store-db", "key": "url"}},
    "apiKeySecretRef": {"name": "api", "key": "api-key"},
    "failover": {
        "healthUrl": "http://memoria-a.prod.svc:8080/healthz",
        "probeService": True,
        "unhealthyAfterSeconds": 25,
        "eligible": False,
    },
}


def env_map(env: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in env}


# == Region.from_body ========================================================================


def test_from_body_reads_every_aliased_field() -> None:
    r = region(spec=FULL_SPEC, annotations={"a": "b"}, status={"role": "leader"})
    s = r.spec
    assert (r.namespace, r.name, r.uid, r.generation) == ("prod", "region-a", "uid-1234", 3)
    assert r.created == "2026-01-01T00:00:00Z"
    assert r.annotations == {"a": "b"}
    assert r.status == {"role": "leader"}
    assert (s.region, s.role, s.group, s.priority) == ("us-east-1", "leader", "payments", 250)
    assert (s.image, s.image_pull_policy, s.replicas) == (
        "registry.example/memoria:1.2.3",
        "Always",
        3,
    )
    assert s.resources.requests == {"cpu": "100m", "memory": "256Mi"}
    assert s.resources.limits == {"memory": "512Mi"}
    assert s.sync.backend == "postgres"
    assert s.sync.connection_url is None
    assert s.sync.connection_secret_ref == SecretKeyRef(name="sync-db", key="dsn")
    assert (s.sync.channel, s.sync.table, s.sync.realtime_replication) == (
        "memoria_sync",
        "infra.memoria_sync_events",
        False,
    )
    assert (s.privacy.floor, s.privacy.ceiling) == (-5, 10)
    assert (s.scheduler.time_zone, s.scheduler.enabled) == ("America/New_York", True)
    assert s.store.connection_secret_ref == SecretKeyRef(name="store-db", key="url")
    assert s.api_key_secret_ref == SecretKeyRef(name="api", key="api-key")
    f = s.failover
    assert (f.health_url, f.probe_service, f.unhealthy_after_seconds, f.eligible) == (
        "http://memoria-a.prod.svc:8080/healthz",
        True,
        25,
        False,
    )


def test_from_body_defaults_for_a_minimal_spec() -> None:
    r = region(spec={"region": "r1", "sync": {"backend": "redis"}})
    s = r.spec
    assert (s.role, s.group, s.priority, s.replicas) == ("standby", "default", 100, 1)
    assert s.image is None
    assert s.image_pull_policy == "IfNotPresent"
    # the CRD's defaults: a region never runs without requests (issue 12)
    assert s.resources.requests == {"cpu": "100m", "memory": "128Mi"}
    assert s.resources.limits == {"memory": "512Mi"}
    assert s.sync.enabled is True
    assert s.sync.connection_url is None and s.sync.connection_secret_ref is None
    assert s.sync.channel is None  # the runtime's default for the backend (issue 14)
    assert s.sync.table is None
    assert s.sync.realtime_replication is True
    assert (s.privacy.floor, s.privacy.ceiling) == (-15, 15)
    assert (s.scheduler.time_zone, s.scheduler.enabled) == ("UTC", True)
    assert s.store.connection_secret_ref is None
    assert s.api_key_secret_ref is None
    assert s.failover.health_url is None
    assert s.failover.probe_service is False
    assert s.failover.unhealthy_after_seconds == 10
    assert s.failover.eligible is True


def test_from_body_tolerates_missing_optional_metadata() -> None:
    raw = {
        "metadata": {"namespace": "ns", "name": "n", "annotations": None},
        "spec": {"region": "r", "sync": {"backend": "redis"}},
        "status": None,
    }
    r = Region.from_body(raw)
    assert r.uid == ""
    assert r.generation == 0
    assert r.annotations == {}
    assert r.status == {}
    assert r.created == ""


def test_from_body_copies_annotations_and_status() -> None:
    raw = body(annotations={"x": "1"}, status={"role": "standby"})
    r = Region.from_body(raw)
    raw["metadata"]["annotations"]["x"] = "2"
    raw["status"]["role"] = "leader"
    assert r.annotations == {"x": "1"}
    assert r.status == {"role": "standby"}


def test_from_body_ignores_unknown_spec_fields() -> None:
    r = region(
        spec={"region": "r", "sync": {"backend": "redis", "future": 1}, "somethingNew": True}
    )
    assert r.spec.region == "r"
    assert not hasattr(r.spec, "somethingNew")


@pytest.mark.parametrize(
    "spec",
    [
        {"region": "r"},  # no sync
        {"sync": {"backend": "redis"}},  # no region
        {"region": "r", "sync": {}},  # no backend
        {"region": "r", "sync": {"backend": "redis"}, "priority": "high"},
    ],
)
def test_from_body_refuses_an_unusable_spec(spec: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        region(spec=spec)


def test_region_is_frozen() -> None:
    r = region()
    with pytest.raises(pydantic.ValidationError):
        r.name = "other"


def test_derived_names() -> None:
    r = region(name="region-b", namespace="ns1", spec={**FULL_SPEC, "group": "g7"})
    assert r.key == "ns1/region-b"
    assert r.group_key == ("ns1", "g7")
    assert r.lease_name == "memoria-scheduler-g7"
    assert r.workload_name == "memoria-region-b"


@pytest.mark.parametrize(
    ("value", "fenced"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("Yes", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("", False),
        ("fenced", False),
    ],
)
def test_fenced_annotation_values(value: str, fenced: bool) -> None:
    r = region(annotations={"memoria.arcafutura.io/fenced": value})
    assert r.fenced is fenced
    assert r.may_lead is (not fenced)


def test_not_fenced_without_annotation() -> None:
    assert region().fenced is False


def test_fenced_needs_the_exact_annotation_key() -> None:
    assert region(annotations={"example.com/fenced": "true"}).fenced is False


def test_promote_request() -> None:
    key = "memoria.arcafutura.io/promote"
    assert region().promote_request is None
    assert region(annotations={key: ""}).promote_request is None
    assert region(annotations={key: "20260101T000000.000000Z"}).promote_request == (
        "20260101T000000.000000Z"
    )


def test_may_lead_needs_an_enabled_scheduler() -> None:
    spec = {"region": "r", "sync": {"backend": "redis"}, "scheduler": {"enabled": False}}
    assert region(spec=spec).may_lead is False
    spec["scheduler"] = {"enabled": True}
    assert region(spec=spec).may_lead is True


def test_may_lead_ignores_failover_eligibility() -> None:
    spec = {"region": "r", "sync": {"backend": "redis"}, "failover": {"eligible": False}}
    assert region(spec=spec).may_lead is True


# -- the model's defaults agree with the CRD's -----------------------------------------------


def _crd_spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    version = crd["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]  # type: ignore[no-any-return]


def _crd_default(*path: str) -> Any:
    node = _crd_spec_schema()
    for part in path:
        node = node["properties"][part]
    return node["default"]


def _model_default(*path: str) -> Any:
    """The value the model gives a field the body leaves out (only the required fields set)."""
    spec: dict[str, Any] = {"region": "r", "sync": {"backend": "redis"}}
    container = spec
    for part in path[:-1]:
        container = container.setdefault(part, {})
    if path[-1] == "key":  # a secret reference needs its name
        container["name"] = "s"
    dumped = RegionSpec.model_validate(spec).model_dump(by_alias=True)
    for part in path:
        dumped = dumped[part]
    return dumped


@pytest.mark.parametrize(
    "path",
    [
        ("role",),
        ("group",),
        ("priority",),
        ("imagePullPolicy",),
        ("replicas",),
        ("sync", "enabled"),
        ("sync", "realtimeReplication"),
        ("sync", "connectionSecretRef", "key"),
        ("privacy", "floor"),
        ("privacy", "ceiling"),
        ("scheduler", "timeZone"),
        ("scheduler", "enabled"),
        ("store", "connectionSecretRef", "key"),
        ("apiKeySecretRef", "key"),
        ("failover", "probeService"),
        ("failover", "unhealthyAfterSeconds"),
        ("failover", "eligible"),
    ],
)
def test_model_defaults_match_the_crd(path: tuple[str, ...]) -> None:
    assert _model_default(*path) == _crd_default(*path)


# == config_problems ==========================================================================


def spec_of(**overrides: Any) -> RegionSpec:
    raw: dict[str, Any] = {
        "region": "r",
        "sync": {"backend": "redis", "connectionUrl": "redis://r:6379/0"},
    }
    raw.update(overrides)
    return RegionSpec.model_validate(raw)


def test_valid_spec_has_no_problems() -> None:
    assert config_problems(spec_of()) == []
    assert config_problems(RegionSpec.model_validate(FULL_SPEC)) == []


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"])
def test_iana_zones_are_accepted(zone: str) -> None:
    assert config_problems(spec_of(scheduler={"timeZone": zone})) == []


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Europe/Pariss", "utc-ish", "../etc/passwd"])
def test_unknown_time_zone(zone: str) -> None:
    problems = config_problems(spec_of(scheduler={"timeZone": zone}))
    assert [p[0] for p in problems] == ["InvalidTimeZone"]
    assert repr(zone) in problems[0][1]
    assert "spec.scheduler.timeZone" in problems[0][1]


def test_leader_without_scheduler() -> None:
    problems = config_problems(spec_of(role="leader", scheduler={"enabled": False}))
    assert [p[0] for p in problems] == ["LeaderWithoutScheduler"]
    assert "spec.scheduler.enabled is false" in problems[0][1]


def test_standby_without_scheduler_is_fine() -> None:
    assert config_problems(spec_of(role="standby", scheduler={"enabled": False})) == []


@pytest.mark.parametrize(
    ("backend", "url", "ok"),
    [
        ("redis", "redis://r:6379/0", True),
        ("redis", "rediss://r:6380/0", True),
        ("redis", "postgresql://db/memoria", False),
        ("redis", "postgres://db/memoria", False),
        ("postgres", "postgres://db/memoria", True),
        ("postgres", "postgresql://db/memoria", True),
        ("postgres", "redis://r:6379/0", False),
        ("postgres", "rediss://r:6379/0", False),
    ],
)
def test_connection_url_must_match_the_backend(backend: str, url: str, ok: bool) -> None:
    problems = config_problems(spec_of(sync={"backend": backend, "connectionUrl": url}))
    if ok:
        assert problems == []
    else:
        assert [p[0] for p in problems] == ["ConnectionUrlMismatch"]
        expected = " or ".join(SYNC_URL_SCHEMES[backend])
        assert f"not a {backend} URL (expected {expected})" in problems[0][1]


def test_secret_backed_url_is_not_checked_here() -> None:
    spec = spec_of(sync={"backend": "postgres", "connectionSecretRef": {"name": "s"}})
    assert config_problems(spec) == []


def test_all_problems_are_reported_in_order() -> None:
    spec = spec_of(
        role="leader",
        scheduler={"enabled": False, "timeZone": "Nowhere/Land"},
        sync={"backend": "postgres", "connectionUrl": "redis://r"},
    )
    assert [p[0] for p in config_problems(spec)] == [
        "InvalidTimeZone",
        "LeaderWithoutScheduler",
        "ConnectionUrlMismatch",
    ]


# == render ===================================================================================


def test_labels_and_selector() -> None:
    r = region(name="region-a", spec={**FULL_SPEC, "group": "payments", "region": "us-east-1"})
    assert render.labels(r) == {
        "app.kubernetes.io/name": "memoria",
        "app.kubernetes.io/instance": "region-a",
        "app.kubernetes.io/component": "region",
        "app.kubernetes.io/managed-by": "memoria-operator",
        "memoria.arcafutura.io/region": "us-east-1",
        "memoria.arcafutura.io/group": "payments",
    }
    assert render.selector(r) == {
        "app.kubernetes.io/name": "memoria",
        "app.kubernetes.io/instance": "region-a",
    }


def test_selectors_of_two_regions_do_not_overlap() -> None:
    a = render.selector(region(name="region-a"))
    b = render.selector(region(name="region-b"))
    assert a != b
    # a pod of b does not match a's selector
    pod_b = render.labels(region(name="region-b"))
    assert not all(pod_b.get(k) == v for k, v in a.items())


def test_owner_reference() -> None:
    assert render.owner_reference(region(name="region-a", uid="u-42")) == {
        "apiVersion": "memoria.arcafutura.io/v1alpha1",
        "kind": "MemoriaRegion",
        "name": "region-a",
        "uid": "u-42",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_render_all_order_and_common_metadata() -> None:
    r = region(name="region-a", namespace="prod", uid="u-1", spec=FULL_SPEC)
    objs = render.render_all(r, DEFAULT_IMAGE)
    assert [(o["apiVersion"], o["kind"]) for o in objs] == [
        ("v1", "ServiceAccount"),
        ("v1", "ConfigMap"),  # the pods' promotion request (issue 15: not their region)
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
    ]
    for obj in objs:
        meta = obj["metadata"]
        if obj["kind"] == "ConfigMap":
            assert meta["name"] == "memoria-region-a-promote"
            assert meta["labels"] == {
                **render.labels(r),
                "app.kubernetes.io/component": "promotion-request",
            }
        else:
            assert meta["name"] == "memoria-region-a"
            assert meta["labels"] == render.labels(r)
        assert meta["namespace"] == "prod"
        assert meta["ownerReferences"] == [render.owner_reference(r)]
        assert meta["ownerReferences"][0]["uid"] == "u-1"


# -- env -------------------------------------------------------------------------------------


def test_env_for_a_plain_redis_spec_exactly() -> None:
    spec = {
        "region": "eu-west-1",
        "group": "g1",
        "sync": {"backend": "redis", "connectionUrl": "redis://redis-a:6379/0"},
        "privacy": {"floor": 0, "ceiling": 10},
        "scheduler": {"timeZone": "Europe/Paris"},
    }
    r = region(name="region-a", namespace="prod", spec=spec)
    assert render.render_env(r) == [
        {"name": "MEMORIA_REGION", "value": "eu-west-1"},
        {"name": "MEMORIA_HOST", "value": "0.0.0.0"},
        {"name": "MEMORIA_PORT", "value": "8080"},
        {"name": "MEMORIA_SYNC__ENABLED", "value": "true"},
        {"name": "MEMORIA_SYNC__BACKEND", "value": "redis"},
        {"name": "MEMORIA_SYNC__CONNECTION_URL", "value": "redis://redis-a:6379/0"},
        # no channel in the spec: no MEMORIA_SYNC__CHANNEL, the runtime's default applies
        {"name": "MEMORIA_SYNC__PRIVACY_FLOOR", "value": "0"},
        {"name": "MEMORIA_SYNC__PRIVACY_CEILING", "value": "10"},
        {"name": "MEMORIA_SYNC__REALTIME_REPLICATION", "value": "true"},
        {"name": "MEMORIA_SYNC__REPLICA_PROMOTION", "value": "leader"},
        {"name": "DECREMENT_TZ", "value": "Europe/Paris"},
        {"name": "DISABLE_SCHEDULERS", "value": "false"},
        {
            "name": "MEMORIA_DATABASE__CONNECTION_STRING",
            "value": "sqlite:////var/lib/memoria/memoria.db",
        },
        {"name": "MEMORIA_LEADERSHIP__LEASE_NAME", "value": "memoria-scheduler-g1"},
        {"name": "MEMORIA_LEADERSHIP__LEASE_NAMESPACE", "value": "prod"},
        {"name": "MEMORIA_LEADERSHIP__IDENTITY", "value": "prod/region-a"},
    ]


def test_env_with_secrets_uses_secret_key_refs_only() -> None:
    r = region(spec=FULL_SPEC)
    env = render.render_env(r)
    by_name = env_map(env)
    assert by_name["MEMORIA_SYNC__CONNECTION_URL"] == {
        "name": "MEMORIA_SYNC__CONNECTION_URL",
        "valueFrom": {"secretKeyRef": {"name": "sync-db", "key": "dsn"}},
    }
    assert by_name["MEMORIA_DATABASE__CONNECTION_STRING"] == {
        "name": "MEMORIA_DATABASE__CONNECTION_STRING",
        "valueFrom": {"secretKeyRef": {"name": "store-db", "key": "url"}},
    }
    assert by_name["MEMORIA_API_KEY"] == {
        "name": "MEMORIA_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "api", "key": "api-key"}},
    }
    secret_backed = {e["name"] for e in env if "valueFrom" in e}
    assert secret_backed == {
        "MEMORIA_SYNC__CONNECTION_URL",
        "MEMORIA_DATABASE__CONNECTION_STRING",
        "MEMORIA_API_KEY",
    }
    for entry in env:
        # exactly one of value / valueFrom, and values are strings (the API refuses others)
        assert ("value" in entry) != ("valueFrom" in entry), entry
        if "value" in entry:
            assert isinstance(entry["value"], str)
    # no sqlite fallback when the store is a Secret
    assert "sqlite" not in repr(env)


def test_env_secret_reference_wins_over_a_plain_url() -> None:
    # the CRD refuses both at once; if it ever got through, the plain URL must not leak
    spec = {
        "region": "r",
        "sync": {
            "backend": "redis",
            "connectionUrl": "redis://plain:6379/0",
            "connectionSecretRef": {"name": "s", "key": "k"},
        },
    }
    env = render.render_env(region(spec=spec))
    urls = [e for e in env if e["name"] == "MEMORIA_SYNC__CONNECTION_URL"]
    assert urls == [
        {
            "name": "MEMORIA_SYNC__CONNECTION_URL",
            "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
        }
    ]
    assert "redis://plain" not in repr(env)


def test_env_without_any_url_has_no_connection_url() -> None:
    env = env_map(render.render_env(region(spec={"region": "r", "sync": {"backend": "redis"}})))
    assert "MEMORIA_SYNC__CONNECTION_URL" not in env
    assert "MEMORIA_API_KEY" not in env


def test_env_names_are_unique() -> None:
    for spec in (FULL_SPEC, body()["spec"]):
        names = [e["name"] for e in render.render_env(region(spec=spec))]
        assert len(names) == len(set(names))


def test_env_table_only_when_set() -> None:
    with_table = env_map(render.render_env(region(spec=FULL_SPEC)))
    assert with_table["MEMORIA_SYNC__TABLE"]["value"] == "infra.memoria_sync_events"
    without = env_map(render.render_env(region()))
    assert "MEMORIA_SYNC__TABLE" not in without


@pytest.mark.parametrize(
    ("sync_enabled", "realtime", "scheduler", "expected"),
    [
        (True, True, True, ("true", "true", "false")),
        (False, False, False, ("false", "false", "true")),
        (True, False, True, ("true", "false", "false")),
    ],
)
def test_env_booleans(
    sync_enabled: bool, realtime: bool, scheduler: bool, expected: tuple[str, str, str]
) -> None:
    spec = {
        "region": "r",
        "sync": {
            "backend": "redis",
            "connectionUrl": "redis://r",
            "enabled": sync_enabled,
            "realtimeReplication": realtime,
        },
        "scheduler": {"enabled": scheduler},
    }
    env = env_map(render.render_env(region(spec=spec)))
    got = (
        env["MEMORIA_SYNC__ENABLED"]["value"],
        env["MEMORIA_SYNC__REALTIME_REPLICATION"]["value"],
        env["DISABLE_SCHEDULERS"]["value"],
    )
    assert got == expected


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("MEMORIA_") or name in {"DECREMENT_TZ", "DISABLE_SCHEDULERS"}:
            monkeypatch.delenv(name)
    return monkeypatch


def test_rendered_env_is_what_the_runtime_reads(clean_env: pytest.MonkeyPatch) -> None:
    """The operator's env names and formats are the runtime's contract: load them back."""
    r = region(name="region-a", namespace="prod", spec=FULL_SPEC)
    fake_secrets = {
        ("sync-db", "dsn"): "postgresql://sync:pw@writer/memoria",
        ("store-db", "url"): "postgresql://store:pw@store/memoria",
        ("api", "api-key"): "k3y",
    }
    for entry in render.render_env(r):
        if "value" in entry:
            clean_env.setenv(entry["name"], entry["value"])
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            clean_env.setenv(entry["name"], fake_secrets[(ref["name"], ref["key"])])
    s = load_settings()
    assert s.region == "us-east-1"
    assert s.sync.enabled is True
    assert s.sync.backend is SyncBackendName.POSTGRES
    assert s.sync.connection == "postgresql://sync:pw@writer/memoria"
    assert s.sync.channel == "memoria_sync"
    assert s.sync.table == "infra.memoria_sync_events"
    assert s.privacy_range == (-5, 10)
    assert s.sync.realtime_replication is False
    assert s.decrement_tz == "America/New_York"
    assert s.disable_schedulers is False
    assert s.database.connection_string.get_secret_value() == (
        "postgresql://store:pw@store/memoria"
    )
    assert s.api_key is not None and s.api_key.get_secret_value() == "k3y"
    assert s.leadership.lease_name == "memoria-scheduler-payments"
    assert s.leadership.lease_namespace == "prod"
    assert s.leadership.identity == "prod/region-a"


def test_rendered_sqlite_store_lives_on_the_data_volume(clean_env: pytest.MonkeyPatch) -> None:
    r = region(spec={"region": "r", "sync": {"backend": "redis", "connectionUrl": "redis://x"}})
    for entry in render.render_env(r):
        clean_env.setenv(entry["name"], entry["value"])
    url = load_settings().database.connection_string.get_secret_value()
    assert url.startswith("sqlite:///")
    path = url.removeprefix("sqlite:///")  # how memoria.store.open_database reads it
    deployment = render.render_deployment(r, DEFAULT_IMAGE)
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    data = next(m for m in mounts if m["name"] == "data")
    assert os.path.isabs(path)
    assert os.path.dirname(path) == data["mountPath"]


# -- secret_refs -----------------------------------------------------------------------------


def test_secret_refs_lists_every_reference_with_its_field() -> None:
    assert render.secret_refs(region(spec=FULL_SPEC)) == [
        ("spec.sync.connectionSecretRef", SecretKeyRef(name="sync-db", key="dsn")),
        ("spec.store.connectionSecretRef", SecretKeyRef(name="store-db", key="url")),
        ("spec.apiKeySecretRef", SecretKeyRef(name="api", key="api-key")),
    ]


def test_secret_refs_empty_without_secrets() -> None:
    assert render.secret_refs(region()) == []


def test_every_secret_ref_is_used_in_env() -> None:
    r = region(spec=FULL_SPEC)
    used = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in render.render_env(r)
        if "valueFrom" in e
    }
    assert used == {(ref.name, ref.key) for _, ref in render.secret_refs(r)}


# -- Deployment ------------------------------------------------------------------------------


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_deployment_image_and_replicas() -> None:
    dep = render.render_deployment(region(spec=FULL_SPEC), DEFAULT_IMAGE)
    c = _container(dep)
    assert c["image"] == "registry.example/memoria:1.2.3"
    assert c["imagePullPolicy"] == "Always"
    assert dep["spec"]["replicas"] == 3


def test_deployment_uses_default_image_when_spec_has_none() -> None:
    dep = render.render_deployment(region(), DEFAULT_IMAGE)
    c = _container(dep)
    assert c["image"] == DEFAULT_IMAGE
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert dep["spec"]["replicas"] == 1


def test_deployment_command_ports_and_probes() -> None:
    c = _container(render.render_deployment(region(), DEFAULT_IMAGE))
    assert c["name"] == "memoria"
    assert c["command"] == ["memoria"]
    assert c["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    port_names = {p["name"] for p in c["ports"]}
    for probe in (c["readinessProbe"], c["livenessProbe"]):
        assert probe["httpGet"]["path"] == "/healthz"
        assert probe["httpGet"]["port"] in port_names
        assert probe["timeoutSeconds"] == 2
    assert (c["readinessProbe"]["periodSeconds"], c["readinessProbe"]["failureThreshold"]) == (5, 3)
    assert (c["livenessProbe"]["periodSeconds"], c["livenessProbe"]["failureThreshold"]) == (10, 6)


def test_deployment_env_is_render_env() -> None:
    r = region(spec=FULL_SPEC)
    assert _container(render.render_deployment(r, DEFAULT_IMAGE))["env"] == render.render_env(r)


def test_deployment_resources() -> None:
    c = _container(render.render_deployment(region(spec=FULL_SPEC), DEFAULT_IMAGE))
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "512Mi"},
    }
    c = _container(render.render_deployment(region(), DEFAULT_IMAGE))
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    only_limits = {**body()["spec"], "resources": {"limits": {"cpu": "1"}}}
    c = _container(render.render_deployment(region(spec=only_limits), DEFAULT_IMAGE))
    assert c["resources"] == {"limits": {"cpu": "1"}}


def test_deployment_resources_are_copies() -> None:
    r = region(spec=FULL_SPEC)
    first = render.render_deployment(r, DEFAULT_IMAGE)
    _container(first)["resources"]["requests"]["cpu"] = "999"
    again = render.render_deployment(r, DEFAULT_IMAGE)
    assert _container(again)["resources"]["requests"]["cpu"] == "100m"
    assert r.spec.resources.requests["cpu"] == "100m"


def test_container_security_context_is_restricted() -> None:
    c = _container(render.render_deployment(region(), DEFAULT_IMAGE))
    assert c["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_pod_spec() -> None:
    r = region(name="region-a")
    pod = render.render_deployment(r, DEFAULT_IMAGE)["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "fsGroup": 10001}
    assert pod["serviceAccountName"] == "memoria-region-a"
    assert pod["serviceAccountName"] == render.render_service_account(r)["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["terminationGracePeriodSeconds"] == 30
    # the embedded store lives on the region's own claim, not in the pod (issue 12)
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "memoria-region-a-data"}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]


def test_every_mount_has_a_volume_and_writable_paths_are_mounted() -> None:
    dep = render.render_deployment(region(), DEFAULT_IMAGE)
    pod = dep["spec"]["template"]["spec"]
    volumes = {v["name"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in _container(dep)["volumeMounts"]}
    assert set(mounts.values()) <= volumes
    # the root filesystem is read-only: the data dir and /tmp must be volumes
    assert mounts == {"/var/lib/memoria": "data", "/tmp": "tmp"}


def test_deployment_selector_matches_its_pod_template() -> None:
    r = region(name="region-a", spec=FULL_SPEC)
    dep = render.render_deployment(r, DEFAULT_IMAGE)
    match = dep["spec"]["selector"]["matchLabels"]
    template_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert match == render.selector(r)
    assert template_labels == render.labels(r)
    assert all(template_labels[k] == v for k, v in match.items())


# -- Service, ServiceAccount, Role, RoleBinding ---------------------------------------------


def test_service_targets_the_pods_http_port() -> None:
    r = region(name="region-a")
    svc = render.render_service(r)
    dep = render.render_deployment(r, DEFAULT_IMAGE)
    assert svc["spec"] == {
        "type": "ClusterIP",
        "selector": render.selector(r),
        "ports": [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}],
    }
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())
    container_ports = {p["name"] for p in _container(dep)["ports"]}
    assert svc["spec"]["ports"][0]["targetPort"] in container_ports


def test_service_account_has_only_metadata() -> None:
    sa = render.render_service_account(region(name="region-a"))
    assert set(sa) == {"apiVersion", "kind", "metadata"}
    assert (sa["apiVersion"], sa["kind"], sa["metadata"]["name"]) == (
        "v1",
        "ServiceAccount",
        "memoria-region-a",
    )


def test_role_rules_are_restricted_by_resource_names() -> None:
    r = region(name="region-a", spec={**FULL_SPEC, "group": "payments"})
    role = render.render_role(r)
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["memoria-scheduler-payments"],
            "verbs": ["get", "list", "watch"],
        },
        # a region's pods may not write their MemoriaRegion (issue 15): only their request
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["memoria-region-a-promote"],
            "verbs": ["get", "patch"],
        },
    ]


def test_role_grants_nothing_broad() -> None:
    role = render.render_role(region(spec=FULL_SPEC))
    for rule in role["rules"]:
        assert rule["resourceNames"], rule
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule[field]
        assert not {"create", "update", "delete", "deletecollection", "escalate", "bind"} & set(
            rule["verbs"]
        )
        assert "secrets" not in rule["resources"]
        assert "memoriaregions/status" not in rule["resources"]


def test_role_lease_name_is_the_one_the_pods_read() -> None:
    r = region(spec={**FULL_SPEC, "group": "g9"})
    lease_rule = render.render_role(r)["rules"][0]
    env = env_map(render.render_env(r))
    assert lease_rule["resourceNames"] == [env["MEMORIA_LEADERSHIP__LEASE_NAME"]["value"]]


def test_role_binding_ties_the_role_to_the_service_account() -> None:
    r = region(name="region-a", namespace="prod")
    rb = render.render_role_binding(r)
    role = render.render_role(r)
    sa = render.render_service_account(r)
    assert rb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert rb["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "prod"}
    ]


def test_render_is_deterministic_and_does_not_touch_the_region() -> None:
    r = region(spec=FULL_SPEC)
    before = r.model_dump()
    first = render.render_all(r, DEFAULT_IMAGE)
    second = render.render_all(r, DEFAULT_IMAGE)
    assert first == second
    expected = copy.deepcopy(first)
    # a caller editing what it got back (kopf adopts, apply adds fields) changes nothing shared
    first[0]["metadata"]["labels"]["x"] = "y"
    first[-1]["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X"})
    assert render.render_all(r, DEFAULT_IMAGE) == expected
    assert r.model_dump() == before


def test_the_crd_accepts_exactly_the_contract_s_sync_schemes() -> None:
    """The CRD's CEL rule and memoria.contract agree: a scheme the runtime accepts is not
    refused by the API server, and the other way round."""
    crd = yaml.safe_load((REPO / "crds" / "memoriaregion.yaml").read_text())
    sync = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["sync"]
    rules = [v["rule"] for v in sync["properties"]["connectionUrl"]["x-kubernetes-validations"]]
    alternatives = rules[0].split("'^(")[1].split(")://'")[0].split("|")
    schemes = {s for group in SYNC_URL_SCHEMES.values() for s in group}
    assert {f"{a}://" for a in alternatives} == schemes


MINIMAL_SPEC: dict[str, Any] = {
    "region": "eu-west-1",
    "sync": {"backend": "redis", "connectionUrl": "redis://r:6379/0"},
}


def test_embedded_store_gets_an_owned_claim_and_a_recreate_rollout() -> None:
    r = region(name="region-a", spec={**MINIMAL_SPEC, "store": {"persistence": {"size": "5Gi"}}})
    objs = render.render_all(r, DEFAULT_IMAGE)
    claim = objs[0]
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["metadata"]["name"] == "memoria-region-a-data"
    assert claim["metadata"]["ownerReferences"][0]["name"] == "region-a"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "5Gi"}},
    }
    deployment = objs[-1]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_claim_storage_class_is_passed_through() -> None:
    r = region(spec={**MINIMAL_SPEC, "store": {"persistence": {"storageClassName": "fast"}}})
    claim = render.render_data_claim(r)
    assert claim is not None
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"] == {"requests": {"storage": "1Gi"}}


@pytest.mark.parametrize(
    "store",
    [
        {"persistence": {"enabled": False}},
        {"connectionSecretRef": {"name": "pg"}},
    ],
)
def test_no_claim_without_an_embedded_persistent_store(store: dict[str, Any]) -> None:
    r = region(spec={**MINIMAL_SPEC, "store": store})
    assert render.render_data_claim(r) is None
    kinds = [o["kind"] for o in render.render_all(r, DEFAULT_IMAGE)]
    assert "PersistentVolumeClaim" not in kinds
    deployment = render.render_deployment(r, DEFAULT_IMAGE)
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"][0] == {"name": "data", "emptyDir": {}}
