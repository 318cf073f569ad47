"""The operator's health probes against real HTTP servers on loopback: pod URLs, no redirects,
any answering pod makes a region healthy, a silent one is unhealthy within the timeout."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from memoria_operator.health import HealthTracker, running_pod_urls
from memoria_operator.model import Region
from memoria_operator.probepolicy import ProbePolicy

# these servers run on loopback, which the operator probes only when told to
LOOPBACK = ProbePolicy.parse("127.0.0.0/8")


def _pod(ip: str | None, phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"pod-{ip}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, "podIP": ip}}


def test_running_pod_urls_skips_pods_that_cannot_answer() -> None:
    pods = [
        _pod("10.88.0.5"),
        _pod("10.88.0.6", phase="Pending"),
        _pod(None),
        _pod("10.88.0.7", deleting=True),
        _pod("fd00::7"),
    ]
    assert running_pod_urls(pods) == [
        "http://10.88.0.5:8080/healthz",
        "http://[fd00::7]:8080/healthz",
    ]


class _Server:
    """A tiny /healthz on loopback whose answer the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.location: str | None = None
        self.leading = False
        self.body: dict[str, Any] | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer = owner.body or {"scheduler": {"leading": owner.leading}}
                body = json.dumps(answer).encode()
                self.send_response(owner.status)
                if owner.location:
                    self.send_header("Location", owner.location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/healthz"


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.httpd.shutdown()


def _region(url: str) -> Region:
    return Region.from_body(
        {
            "metadata": {"namespace": "ns", "name": "a", "uid": "u", "generation": 1},
            "spec": {
                "region": "a",
                "sync": {"backend": "redis", "connectionUrl": "redis://r"},
                "failover": {"healthUrl": url},
            },
        }
    )


AVAILABLE = {"status": {"conditions": [{"type": "Available", "status": "True"}]}}


def _check(tracker: HealthTracker, region: Region) -> Any:
    async def go() -> Any:
        try:
            return await tracker.check(region, AVAILABLE)
        finally:
            await tracker.close()

    return asyncio.run(go())


def test_a_redirect_is_not_followed_and_counts_as_unhealthy(server: _Server) -> None:
    target = _Server()
    try:
        server.status, server.location = 302, target.url
        health = _check(HealthTracker(1.0, policy=LOOPBACK), _region(server.url))
        assert not health.healthy
        assert "answered 302" in health.message
    finally:
        target.httpd.shutdown()


def test_healthy_and_leading_from_the_answer(server: _Server) -> None:
    server.leading = True
    health = _check(HealthTracker(1.0, policy=LOOPBACK), _region(server.url))
    assert health.healthy and health.leading is True


def test_a_silent_process_is_unhealthy_within_the_timeout() -> None:
    # a listening socket that never answers: what a SIGSTOPped process looks like
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/healthz"
        health = _check(HealthTracker(0.5, policy=LOOPBACK), _region(url))
        assert not health.healthy
        assert "did not answer within 0.5s" in health.message
    finally:
        sock.close()


def test_a_region_that_cannot_watch_its_lease_is_not_healthy(server: _Server) -> None:
    """It answers, but it never arms its scheduler: it may neither keep nor win the Lease."""
    from memoria_operator.health import lease_blind

    assert lease_blind({"leadership": {"lease": "ns/l", "watch_connected": False}})
    blind = {"lease": "ns/l", "watch_connected": False, "seconds_disconnected": 6.0}
    assert lease_blind({"leadership": blind})
    # a watch reconnecting for a moment is not blindness
    assert not lease_blind({"leadership": {**blind, "seconds_disconnected": 1.0}})
    assert not lease_blind({"leadership": {"lease": "ns/l", "watch_connected": True}})
    assert not lease_blind({"leadership": {"lease": None, "held": True}})  # no Lease to follow
    assert not lease_blind(None)
    server.body = {"leadership": {"lease": "ns/l", "watch_connected": False}}
    health = _check(HealthTracker(1.0, policy=LOOPBACK), _region(server.url))
    assert not health.healthy
    assert "cannot watch its Lease" in health.message


def test_loopback_is_refused_by_default_and_nothing_is_fetched(server: _Server) -> None:
    health = _check(HealthTracker(1.0), _region(server.url))
    assert not health.healthy
    assert health.message.startswith("health URL refused: host 127.0.0.1")


def test_a_user_url_s_answer_is_reported_as_a_class_only(server: _Server) -> None:
    server.status = 418
    health = _check(HealthTracker(1.0, policy=LOOPBACK), _region(server.url))
    assert health.message == "the health URL answered 418"
    assert server.url not in health.message


@pytest.mark.parametrize(
    ("url", "allow", "refused"),
    [
        ("http://169.254.169.254/latest/meta-data/", "0.0.0.0/0", "link-local"),
        ("http://[fe80::1]/", "::/0", "link-local"),
        ("http://0.0.0.0:8080/", "0.0.0.0/0", "unspecified"),
        ("http://127.0.0.1:8080/healthz", "", "loopback"),
        ("http://localhost:8080/healthz", "localhost", "loopback"),
        ("http://2130706433/healthz", "", "not the region's own Service"),
        ("http://10.1.2.3/healthz", "", "not allowed by the operator"),
        ("http://example.invalid/healthz", "", "not the region's own Service"),
        ("http://memoria-a.ns.svc.cluster.local/healthz", "", "does not resolve"),
        ("http://10.1.2.3/healthz", "10.0.0.0/8", None),
        ("http://127.0.0.1:8080/healthz", "127.0.0.0/8", None),
        ("http://localhost:8080/healthz", "localhost,127.0.0.1/32", None),
    ],
)
def test_probe_policy(url: str, allow: str, refused: str | None) -> None:
    why = ProbePolicy.parse(allow).refusal(url, own_service="memoria-a", namespace="ns")
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why, why


def test_probe_policy_names_a_bad_entry() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/99' is neither"):
        ProbePolicy.parse("10.0.0.0/99")


def test_unhealthy_counts_from_the_last_good_probe_not_from_the_failed_one() -> None:
    """The failover bound starts when the region was last seen serving: a probe that times out
    after a second must not add that second (and the probe interval) to the bound."""
    tracker = HealthTracker(timeout=1.0, policy=LOOPBACK)
    first = tracker._record("ns/a", True, "ok", True, started=100.0)
    assert first.last_ok == 100.0
    again = tracker._record("ns/a", True, "ok", True, started=101.0)
    assert (again.since, again.last_ok) == (first.since, 101.0)
    down = tracker._record("ns/a", False, "no answer", None, started=102.0)
    assert not down.healthy
    assert down.since == 101.0  # the start of the last good probe
    later = tracker._record("ns/a", False, "no answer", None, started=104.0)
    assert later.since == 101.0
    back = tracker._record("ns/a", True, "ok", True, started=105.0)
    assert back.healthy and back.since > 101.0 and back.last_ok == 105.0


def test_a_region_never_seen_healthy_is_unhealthy_from_its_first_probe() -> None:
    tracker = HealthTracker(timeout=1.0, policy=LOOPBACK)
    down = tracker._record("ns/b", False, "no answer", None, started=50.0)
    assert down.last_ok is None and down.since > 50.0


def test_a_deleted_pod_is_not_serving_even_while_the_deployment_says_available() -> None:
    """A leader pod being deleted (or its replacement still starting) serves nothing: the
    Deployment's Available condition lags, and judging by it alone added seconds to failover."""
    from memoria_operator.render import selector
    from testbed.fakekube import FakeKube

    region = Region.from_body(
        {
            "metadata": {"namespace": "ns", "name": "a", "uid": "u", "generation": 1},
            "spec": {"region": "a", "sync": {"backend": "redis", "connectionUrl": "redis://r"}},
        }
    )
    kube = FakeKube()
    for name, deleting, phase in (("old", True, "Running"), ("new", False, "Pending")):
        pod = _pod("10.88.0.9" if name == "old" else None, phase=phase, deleting=deleting)
        pod["metadata"].update(name=name, namespace="ns", labels=selector(region))
        kube.put({"apiVersion": "v1", "kind": "Pod", **pod})
    health = _check(HealthTracker(1.0, kube=kube, policy=LOOPBACK), region)
    assert not health.healthy
    assert health.message == "no pod can answer (1 being deleted, 1 not running yet)"


def test_a_deleted_pod_keeps_its_region_unhealthy_until_the_replacement_has_served_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deleted leader pod is a region that went down: its standby must take over within the
    bound even when the Deployment replaces the pod in two seconds. A region whose pods were not
    deleted (a killed container, restarted by the kubelet) is judged by its answers alone."""
    import memoria_operator.health as health_module

    clock = [1000.0]
    monkeypatch.setattr(health_module.time, "monotonic", lambda: clock[0])
    region = Region.from_body(
        {
            "metadata": {"namespace": "ns", "name": "a", "uid": "u", "generation": 1},
            "spec": {
                "region": "a",
                "sync": {"backend": "redis", "connectionUrl": "redis://r"},
                "failover": {"unhealthyAfterSeconds": 5},
            },
        }
    )

    def pod(ip: str, template: str, deleting: bool = False) -> dict[str, Any]:
        p = _pod(ip, deleting=deleting)
        p["metadata"]["labels"] = {"pod-template-hash": template}
        return p

    tracker = HealthTracker(timeout=1.0, policy=LOOPBACK)
    tracker.pods[region.key] = [pod("10.88.0.9", "t1", deleting=True)]
    assert tracker._after_deletion(region, False, "no pod can answer") == (
        False,
        "no pod can answer",
    )
    tracker.pods[region.key] = [pod("10.88.0.10", "t1")]  # the replacement answers 2 s later
    clock[0] += 2
    ok, message = tracker._after_deletion(region, True, "answered")
    assert not ok and "its pod was deleted" in message
    clock[0] += 4.9
    assert not tracker._after_deletion(region, True, "answered")[0]
    clock[0] += 0.2  # answered for the whole bound: healthy again
    assert tracker._after_deletion(region, True, "answered") == (True, "answered")
    # a killed container (its pod stays): unhealthy while down, healthy at its first answer
    assert tracker._after_deletion(region, False, "no answer") == (False, "no answer")
    assert tracker._after_deletion(region, True, "answered") == (True, "answered")
    # a rollout (Recreate): the old pod goes, one of a new template answers: no outage
    tracker.pods[region.key] = [pod("10.88.0.10", "t1", deleting=True)]
    assert not tracker._after_deletion(region, False, "no pod can answer")[0]
    tracker.pods[region.key] = [pod("10.88.0.11", "t2")]
    assert tracker._after_deletion(region, True, "answered") == (True, "answered")
