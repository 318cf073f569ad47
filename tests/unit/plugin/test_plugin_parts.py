"""The plugin's pure parts: the status report from objects, the table, redaction."""

from __future__ import annotations

import base64
import datetime as dt
import tomllib
from typing import Any

from kubectl_memoria.render import Painter, status_lines, table
from kubectl_memoria.report import (
    REDACTED,
    redact,
    referenced_secrets,
    scrub,
    secret_summary,
    secret_values,
)
from kubectl_memoria.status import Health, build
from testbed.paths import REPO

NOW = dt.datetime(2025, 3, 1, 12, 0, 10, tzinfo=dt.UTC)


def _region(name: str, role: str, ready: str = "True", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"group": "g1"},
        "status": {
            "role": role,
            "conditions": [{"type": "Ready", "status": ready, "reason": "Ready"}],
            "leadership": {"lastTransitionReason": "Failover", "lastTransitionTime": "t0"},
            **status,
        },
    }


def _lease(holder: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "memoria-scheduler-g1"},
        "spec": {
            "holderIdentity": holder,
            "leaseTransitions": 4,
            "renewTime": "2025-03-01T12:00:08.500000Z",
        },
    }


def _healthy(name: str) -> Health:
    return Health(
        "service-proxy",
        body={
            "status": "ok",
            "sync": {"state": "ok", "outbox_depth": 3, "listener_reconnects": 1},
            "scheduler": {"leading": name == "a"},
            "decrement": {"date": "2025-03-01", "by": "a"},
        },
    )


def test_a_group_with_a_leader_and_healthy_regions_has_no_problem() -> None:
    regions = [_region("b", "standby"), _region("a", "leader")]
    (group,) = build(
        "ns",
        regions,
        {"memoria-scheduler-g1": _lease("ns/a")},
        {"a": _healthy("a"), "b": _healthy("b")},
        NOW,
    )
    assert group.leader == "a" and group.fencing_token == 4
    assert group.lease_renew_age_seconds == 1.5
    assert group.last_transition_reason == "Failover"
    assert [r.name for r in group.regions] == ["a", "b"]
    assert group.regions[1].outbox_depth == 3 and group.regions[1].last_decrement_by == "a"
    assert group.problems == []


def test_problems_name_what_to_look_at() -> None:
    regions = [_region("a", "standby", ready="False"), _region("b", "standby")]
    down = Health("healthUrl", error="health URL: connection refused")
    (group,) = build("ns", regions, {}, {"a": _healthy("a"), "b": down}, NOW)
    assert group.leader is None
    assert group.problems == [
        "group g1: no region holds the Lease",
        "a: not Ready (Ready)",
        "b: /healthz unreachable",
    ]
    # health nobody could ask (no proxy permission, no URL) is shown, not counted
    (group,) = build(
        "ns", [_region("a", "leader")], {"memoria-scheduler-g1": _lease("ns/a")}, {}, NOW
    )
    assert group.regions[0].health == "unknown" and group.problems == []


def test_without_the_lease_the_status_names_the_holder() -> None:
    region = _region("a", "leader", leadership={"holder": "ns/a", "transitions": 2})
    (group,) = build("ns", [region], {}, {"a": _healthy("a")}, NOW)
    assert group.leader == "a" and group.fencing_token == 2


def test_colour_never_shifts_the_columns() -> None:
    rows = [["NAME", "HEALTH", "X"], ["a", "ok", "1"], ["bbbb", "down", "2"]]
    plain = table(rows, Painter(False))
    coloured = table(rows, Painter(True))
    strip = [
        line.replace("\033[32m", "")
        .replace("\033[31m", "")
        .replace("\033[1m", "")
        .replace("\033[0m", "")
        for line in coloured
    ]
    assert strip == plain
    assert "\033[31mdown\033[0m" in coloured[2]
    (group,) = build("ns", [_region("a", "leader")], {}, {}, NOW)
    assert "\033[" not in "\n".join(status_lines([group], Painter(False)))


SECRET = "postgresql://app:pa55-w0rd-x@db:5432/memoria"


def test_redaction_by_key_env_name_and_url() -> None:
    doc = {
        "metadata": {
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": SECRET, "a": "b"}
        },
        "spec": {"sync": {"connectionUrl": "redis://r:6379/0"}, "replicas": 2},
        "env": [
            {"name": "MEMORIA_SYNC__CONNECTION_URL", "value": SECRET},
            {"name": "MEMORIA_API_KEY", "value": "k"},
            {"name": "MEMORIA_REGION", "value": "eu"},
        ],
        "note": f"connect with {SECRET}",
    }
    out = redact(doc)
    assert out["metadata"]["annotations"] == {"a": "b"}
    assert out["spec"]["sync"]["connectionUrl"] == REDACTED and out["spec"]["replicas"] == 2
    assert [e["value"] for e in out["env"]] == [REDACTED, REDACTED, "eu"]
    assert "pa55-w0rd-x" not in out["note"] and "app:***@db" in out["note"]


def test_secrets_keep_their_keys_and_lose_their_values_everywhere() -> None:
    secret = {
        "metadata": {"name": "s", "namespace": "ns", "annotations": {"x": SECRET}},
        "type": "Opaque",
        "data": {"url": base64.b64encode(SECRET.encode()).decode(), "port": "NTQzMg=="},
    }
    assert secret_summary(secret) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "ns"},
        "type": "Opaque",
        "keys": ["port", "url"],
    }
    values = secret_values(secret)
    assert SECRET in values and "5432" not in values  # too short to scrub
    log = f"INFO started with {SECRET} and {base64.b64encode(SECRET.encode()).decode()}"
    assert scrub(log, values) == f"INFO started with {REDACTED} and {REDACTED}"


def test_referenced_secrets_are_found_at_any_depth() -> None:
    regions = [
        {
            "spec": {
                "sync": {"connectionSecretRef": {"name": "sync"}},
                "apiKeySecretRef": {"name": "k"},
            }
        },
        {"spec": {"store": {"connectionSecretRef": {"name": "db"}}}},
    ]
    assert referenced_secrets(regions) == {"sync", "k", "db"}


def test_the_plugin_is_a_console_script_kubectl_finds() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["kubectl-memoria"] == "kubectl_memoria.cli:main"
