"""The federation bed itself (issue 18): three clusters come up, their six operator links can be
cut one way, a cluster can die and come back with its peers' credentials still valid, an
operator's clock can be skewed, the leader decrements when the clocks move a day, and nothing
is left running afterwards.

Who leads when, under which faults, is the fault test's business
(tests/e2e/federation/test_quorum_faults.py); this one checks the bed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import wait_until
from testbed.federation import LEASE, NAMESPACE, FederationBed, faketime_env, libfaketime

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def can_i(bed: FederationBed, a: str, b: str, *what: str) -> str:
    return bed.via(a, b, "auth", "can-i", *what, "-n", NAMESPACE).stdout.strip()


def lease_reachable(bed: FederationBed, a: str, b: str) -> bool:
    """Whether a's operator gets b's Lease through its link (Found or NotFound both count:
    the API server answered)."""
    proc = bed.via(a, b, "get", "lease", LEASE, "-n", NAMESPACE, "-o", "name")
    return proc.returncode == 0 or "NotFound" in proc.stderr


def test_the_bed(tmp_path: Path) -> None:
    with FederationBed(tmp_path, api_key="federation-key") as bed:
        print(f"federation bed up in {bed.bring_up_seconds:.1f}s")
        for when, note in bed.history.notes:
            print(f"  {when:.1f} {note}")
        pids = bed.pids()
        assert len(pids) == 3 * 4 + 1  # etcd, kube-apiserver, operator, region; one Redis

        for name in bed.names:
            assert bed.kube(name).kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
            assert bed.operator_running(name), name
            region = bed.region(name)
            assert region is not None
            assert region.health()["region"] == f"region-{name}"
            # the operator rendered the API key's Secret; PATCH /settings needs the key
            assert region.request("PATCH", "/settings", {"sync.enabled": True})[0] == 401
            assert bed.decrements(name).probe is not None  # the probe reached every store

        # six links, each its own proxy, each allowed the group's Lease and nothing else
        assert len({p.port for p in bed.proxies.values()}) == 6
        for a, b in bed.proxies:
            server = bed.peer_kubeconfig(a, b).read_text()
            assert f"127.0.0.1:{bed.proxies[(a, b)].port}" in server
            assert can_i(bed, a, b, "update", f"leases/{LEASE}") == "yes", (a, b)
        assert can_i(bed, "us", "eu", "get", f"leases/{LEASE}") == "yes"
        for what in (
            ("patch", f"leases/{LEASE}"),
            ("watch", "leases"),
            ("create", "leases"),
            ("delete", f"leases/{LEASE}"),
            ("get", "leases/memoria-operator"),
            ("list", "secrets"),
            ("get", "memoriaregions"),
        ):
            assert can_i(bed, "us", "eu", *what) == "no", what

        # a one-way cut: us -> eu fails while eu -> us works, until healed
        assert lease_reachable(bed, "us", "eu")
        bed.cut("us", "eu")
        assert not lease_reachable(bed, "us", "eu")
        assert lease_reachable(bed, "eu", "us")
        bed.heal("us", "eu")
        assert lease_reachable(bed, "us", "eu")

        # a paused API server answers nobody until resumed
        bed.pause_apiserver("eu")
        started = time.monotonic()
        assert not lease_reachable(bed, "ap", "eu")
        assert time.monotonic() - started >= 4  # it hung until the request timed out
        bed.resume_apiserver("eu")
        assert lease_reachable(bed, "ap", "eu")

        # a cluster dies and comes back: same address, and the tokens its peers hold still work
        bed.kill_cluster("ap")
        assert not lease_reachable(bed, "us", "ap")
        assert bed.region("ap") is None
        bed.restart_cluster("ap")
        assert lease_reachable(bed, "us", "ap")
        assert can_i(bed, "eu", "ap", "update", f"leases/{LEASE}") == "yes"
        assert bed.operator_running("ap")
        assert bed.decrements("ap").probe is not None  # its store was kept

        # the leader by spec (region-us, alone in its cluster) decrements when the clocks move
        wait_until(lambda: bed.leading("us"), 60, "region-us to lead in its own cluster")
        with bed.recording():
            before = bed.decrements("us").dates
            moved = time.monotonic()
            date = bed.advance_day()
            wait_until(lambda: date in bed.decrements("us").dates, 20, f"a decrement of {date}")
            print(
                f"decrement of {date} seen {time.monotonic() - moved:.2f}s after the clocks moved"
            )
            time.sleep(1)
        us = bed.decrements("us")
        assert us.dates == sorted({*before, date})
        assert us.probe is not None
        assert us.probe.x is not None
        assert us.probe.x == us.probe.x0 - len([d for d in us.dates if d > us.probe.as_of])
        # the judge runs on what was recorded (not asserted: the group has no quorum yet)
        for violation in bed.check(bound=10):
            print(f"  (informative) {violation}")

        # us's operator on a clock 5.5 s ahead (beyond the bound: the fault test stays within
        # it); the restart is an operator outage, so the group may fail over meanwhile, and
        # then it has a leader again, whoever that is
        libfaketime()
        bed.skew_clock("us", 5.5)
        assert bed.operator_running("us")
        wait_until(
            lambda: any(bed.leading(n) for n in bed.names), 30, "a leader after the skewed restart"
        )
        # a Python child under the same preload: offset clock, and TLS to the API server works
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, time; from kubernetes import client, config; "
                f"api = config.new_client_from_config('{bed.kube('us').kubeconfig}'); "
                "lease = client.CoordinationV1Api(api).read_namespaced_lease("
                f"'{LEASE}', '{NAMESPACE}'); "
                "print(json.dumps([time.time(), lease.spec.holder_identity]))",
            ],
            env={**os.environ, **faketime_env(-90.25)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        at, holder = json.loads(child.stdout)
        assert holder == "memoria/region-us" or holder.endswith("/memoria/region-us")
        assert time.time() - at > 89

    for pid in pids:
        assert not alive(pid), f"process {pid} outlived the bed"
    for proxy in bed.proxies.values():
        with pytest.raises(OSError):
            socket_connect(proxy.port)


def socket_connect(port: int) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
