"""Three Kubernetes clusters, one Memoria group: the federation test bed (issue 18).

Each cluster (``us``, ``eu``, ``ap``) is a :class:`~testbed.controlplane.LocalControlPlane`
(etcd and kube-apiserver, no controller manager: nothing here needs garbage collection or
namespace deletion, and the bed plays kubelet itself) with the CRD installed, its own operator
as an OS process, one MemoriaRegion ``region-<cluster>`` in namespace ``memoria`` and that
region's ``memoria serve`` process, run with the environment the operator rendered into its
Deployment, its own SQLite store and its own cluster's API server for its Lease watch. All
three regions sync over one real Redis.

Operators reach their peers' API servers only through the bed: for every directed pair (a, b)
a :class:`~testbed.proxy.TcpProxy` in front of b's API server, and in a's peers directory
(``MEMORIA_OPERATOR_PEERS_DIR``) a kubeconfig ``<b>/kubeconfig`` with a token of the
ServiceAccount ``memoria-peer-<a>`` on b, whose Role allows only get and update of
the group's Lease. So a test can cut a -> b and leave b -> a up. The operator's link to its own
API server is direct.

The bed records what it does in a :class:`~testbed.history.History` (fault windows, notes);
:meth:`FederationBed.recording` adds who said it leads, and :meth:`FederationBed.check` judges
it all with :func:`testbed.history.check`.

Decrements come often: every region starts with its scheduler clock
(``scheduler.clock_offset_seconds``) :data:`BASE_OFFSET_DAYS` days back, and
:meth:`FederationBed.advance_day` moves all of them forward by whole days through ``PATCH
/settings``, which wakes the leader's scheduler to catch up the new date at once. Dates stay
in the past, so a standby never refuses the leader's decrement event as a date in the future.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml

from memoria.contract import lease_name
from memoria.errors import MemoryNotFound
from memoria.store import MemoryStore

from .binaries import Binaries, ensure_binaries
from .cluster import env_of, install_crd, mark_available, secret, start_operator
from .controlplane import LocalControlPlane
from .datastores import RedisServer
from .harness import BED_OPERATOR_ENV
from .history import (
    DecrementRow,
    History,
    LeadershipRecorder,
    ProbeReading,
    StoreView,
    Violation,
    check,
)
from .kube import KubeTarget
from .paths import CRD
from .processes import ManagedProcess, free_port, wait_until
from .proxy import TcpProxy
from .regions import health_failover, region_manifest
from .serve import MemoriaProcess

CLUSTERS = ("us", "eu", "ap")
NAMESPACE = "memoria"
GROUP = "default"
LEASE = lease_name(GROUP)
BASE_OFFSET_DAYS = 1000  # the regions' scheduler clocks start this many days back
DAY = 86400.0
API_KEY_SECRET = "memoria-api-key"  # noqa: S105 - a Secret's name
PEER_ROLE = "memoria-peer-lease"
TOKEN_DURATION = "24h"  # noqa: S105 - how long the tokens we mint last
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)

T = TypeVar("T")


def region_of(cluster: str) -> str:
    return f"region-{cluster}"


def libfaketime() -> Path:
    """The preload library of the Debian package ``faketime`` (hack/bootstrap.sh installs it)."""
    for pattern in FAKETIME_LIBS:
        for found in sorted(glob.glob(pattern)):
            return Path(found)
    raise FileNotFoundError("libfaketime not found: apt-get install faketime")


def faketime_env(seconds: float) -> dict[str, str]:
    """Environment that runs a process with its wall clock ``seconds`` (fractions included)
    off the machine's: CLOCK_REALTIME only (time.time(), datetime.now(), TLS validity
    checks), not CLOCK_MONOTONIC, as a real clock skew would. Empty for 0."""
    if not seconds:
        return {}
    return {
        "LD_PRELOAD": str(libfaketime()),
        "FAKETIME": f"{seconds:+.6f}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def peer_role() -> dict[str, Any]:
    """What a peer operator may do on a cluster: the group's Lease, nothing else (the local
    operator creates it)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": PEER_ROLE},
        "rules": [
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [LEASE],
                "verbs": ["get", "update"],  # what the chart grants (federation.access)
            }
        ],
    }


def _peer_objects(peers: Sequence[str]) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {**peer_role(), "metadata": {"name": PEER_ROLE, "namespace": NAMESPACE}},
    ]
    for peer in peers:
        sa = f"memoria-peer-{peer}"
        objs += [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": sa, "namespace": NAMESPACE},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": sa, "namespace": NAMESPACE},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": PEER_ROLE,
                },
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}],
            },
        ]
    return objs


@dataclass
class Probe:
    """The memory written at bring-up whose x_coord shows every decrement a store applied."""

    memory_id: str
    x0: float
    as_of: str


@dataclass
class Cluster:
    name: str
    plane: LocalControlPlane
    kube: KubeTarget
    workdir: Path
    region_port: int
    operator: ManagedProcess | None = None
    region: MemoriaProcess | None = None
    skew: float = 0.0
    up: bool = False  # etcd and kube-apiserver running (paused or not)
    paused: bool = False

    @property
    def region_name(self) -> str:
        return region_of(self.name)

    @property
    def peers_dir(self) -> Path:
        return self.workdir / "peers"

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.workdir / 'region' / 'memoria.db'}"

    @property
    def operator_log(self) -> Path:
        return self.workdir / "operator.log"


def _parallel(fn: Callable[[str], T], names: Sequence[str]) -> dict[str, T]:
    with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        futures = {n: pool.submit(fn, n) for n in names}
        return {n: f.result() for n, f in futures.items()}


class FederationBed:
    """Use as a context manager: ``with FederationBed(tmp_path) as bed: ...``.

    Call the methods that start processes (bring-up, :meth:`restart_cluster`,
    :meth:`start_operator`, :meth:`skew_clock`, :meth:`start_region`) from a thread that lives
    as long as the bed, say the test's own: a child process is sent SIGTERM when the thread
    that started it ends.

    ``bound``: each region's ``spec.failover.unhealthyAfterSeconds``. ``max_clock_skew``:
    ``MEMORIA_OPERATOR_MAX_CLOCK_SKEW_SECONDS`` of every operator (and the default ``skew`` of
    :meth:`check`). ``api_key``: regions require it on /settings and /admin (a Secret per
    cluster, ``spec.apiKeySecretRef``). ``operator_env``: more MEMORIA_OPERATOR_* settings.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        clusters: Sequence[str] = CLUSTERS,
        bound: int = 3,
        max_clock_skew: float = 1.0,
        api_key: str | None = None,
        operator_env: dict[str, str] | None = None,
        leader: str | None = None,
        binaries: Binaries | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="memoria-federation-"))
        self.names = tuple(clusters)
        self.leader = leader or self.names[0]  # spec.role: leader; the others standby
        self.bound = bound
        self.max_clock_skew = max_clock_skew
        self.api_key = api_key
        self.operator_env = operator_env or {}
        self.binaries = binaries
        self.clusters: dict[str, Cluster] = {}
        self.proxies: dict[tuple[str, str], TcpProxy] = {}
        self.redis: RedisServer | None = None
        self.history = History(self.names)
        self.clock_offset = -BASE_OFFSET_DAYS * DAY
        self.probe: Probe | None = None
        self.bring_up_seconds: float | None = None

    # -- bring-up --------------------------------------------------------------------------

    def __enter__(self) -> FederationBed:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        binaries = self.binaries or ensure_binaries(("etcd", "kubernetes"))
        self.redis = RedisServer()
        self.redis.start()
        for name in self.names:
            workdir = self.workdir / name
            (workdir / "region").mkdir(parents=True, exist_ok=True)
            plane = LocalControlPlane(binaries, workdir / "plane", controller_manager=False)
            kube = KubeTarget(plane.kubeconfig, binaries.kubectl, "local", plane)
            self.clusters[name] = Cluster(name, plane, kube, workdir, free_port())
        for a in self.names:
            for b in self.names:
                if a != b:
                    self.proxies[(a, b)] = TcpProxy(self.clusters[b].plane.api_port)
        steps: list[tuple[str, Callable[[], object]]] = [
            # processes are started from this thread: each dies with the thread that started it
            # (PR_SET_PDEATHSIG), and a pool's threads end before the bed does
            ("control planes", self._start_planes),
            ("CRDs, peers' RBAC and tokens", lambda: _parallel(self._prepare_cluster, self.names)),
            ("operators", self._start_operators),
            ("regions rendered", lambda: _parallel(self._apply_region, self.names)),
            ("region processes", self._start_regions),
            ("probe memory everywhere", self._write_probe),
        ]
        for what, step in steps:
            began = time.monotonic()
            step()
            self.history.note(f"bring-up: {what} in {time.monotonic() - began:.1f}s")
        self.bring_up_seconds = time.monotonic() - started
        self.history.note(f"bed up in {self.bring_up_seconds:.1f}s")

    def _start_planes(self) -> None:
        for c in self.clusters.values():
            c.plane.start()
            c.up = True

    def _start_operators(self) -> None:
        for name in self.names:
            self.start_operator(name)

    def _prepare_cluster(self, name: str) -> None:
        """CRD, namespace, the peers' ServiceAccounts and Role; then each peer's token
        kubeconfig, reaching this cluster through that peer's own proxy."""
        c = self.clusters[name]
        install_crd(c.kube, CRD, timeout=180)
        peers = [p for p in self.names if p != name]
        c.kube.apply(yaml.safe_dump_all(_peer_objects(peers)))
        if self.api_key is not None:
            secret(c.kube, NAMESPACE, API_KEY_SECRET, key=self.api_key)
        for peer in peers:
            path = self.clusters[peer].peers_dir / name / "kubeconfig"
            path.parent.mkdir(parents=True, exist_ok=True)
            c.kube.token_kubeconfig(
                f"memoria-peer-{peer}",
                NAMESPACE,
                path,
                duration=TOKEN_DURATION,
                server=f"https://127.0.0.1:{self.proxies[(peer, name)].port}",
            )
            path.chmod(0o600)

    def manifest(self, name: str) -> dict[str, Any]:
        c = self.clusters[name]
        others = [n for n in self.names if n != self.leader]
        priority = 100 * (len(self.names) - others.index(name)) if name in others else 1000
        spec: dict[str, Any] = {
            "role": "leader" if name == self.leader else "standby",
            "priority": priority,
            "failover": health_failover(c.region_port, self.bound),
        }
        spec["quorum"] = {"cluster": name, "clusters": list(self.names)}
        if self.api_key is not None:
            spec["apiKeySecretRef"] = {"name": API_KEY_SECRET, "key": "key"}
        manifest = region_manifest(c.region_name, **spec)
        manifest["metadata"]["namespace"] = NAMESPACE
        return manifest

    def _apply_region(self, name: str) -> None:
        c = self.clusters[name]
        c.kube.apply(self.manifest(name), NAMESPACE)
        deployment = f"memoria-{c.region_name}"
        wait_until(
            lambda: self._get(c, "deployment", deployment),
            60,
            f"the operator of {name} to render {deployment}",
            0.25,
            lambda: self._operator_tail(name),
        )
        mark_available(c.kube, NAMESPACE, deployment)

    def _operator_tail(self, name: str) -> str:
        op = self.clusters[name].operator
        return op.log_tail() if op else "(no operator)"

    # -- the regions -----------------------------------------------------------------------

    def region_env(self, name: str) -> dict[str, str]:
        """The env the operator rendered into the region's Deployment, adapted to run here:
        the shared Redis, the region's own SQLite store, a token of its own ServiceAccount on
        its own API server, the bed's scheduler clock offset."""
        c = self.clusters[name]
        assert self.redis is not None
        dep = self._get(c, "deployment", f"memoria-{c.region_name}")
        assert dep is not None, f"no Deployment of {c.region_name} in {name}"
        env = {k: v for k, v in env_of(dep).items() if isinstance(v, str)}
        env.pop("MEMORIA_HOST", None)
        env.pop("MEMORIA_PORT", None)
        env.update(
            {
                "MEMORIA_SYNC__CONNECTION_URL": self.redis.url,
                "MEMORIA_DATABASE__CONNECTION_STRING": c.store_url,
                "MEMORIA_SCHEDULER__CLOCK_OFFSET_SECONDS": repr(self.clock_offset),
            }
        )
        if self.api_key is not None:
            env["MEMORIA_API_KEY"] = self.api_key
        if "MEMORIA_LEADERSHIP__LEASE_NAME" in env:
            env["MEMORIA_LEADERSHIP__KUBECONFIG"] = str(
                c.kube.token_kubeconfig(
                    f"memoria-{c.region_name}",
                    NAMESPACE,
                    c.workdir / "region.kubeconfig",
                    duration=TOKEN_DURATION,
                )
            )
        return env

    def _start_region(self, name: str, wait: bool = True) -> MemoriaProcess:
        c = self.clusters[name]
        wait_until(
            lambda: self._get(c, "serviceaccount", f"memoria-{c.region_name}"),
            30,
            f"the ServiceAccount of {c.region_name}",
            0.25,
        )
        proc = MemoriaProcess(
            c.region_name, self.region_env(name), port=c.region_port, workdir=c.workdir / "region"
        )
        proc.start(wait=wait)
        c.region = proc
        return proc

    def _start_regions(self) -> None:
        procs = [self._start_region(name, wait=False) for name in self.names]
        for proc in procs:
            proc.wait_ready(60)

    def start_region(self, name: str) -> None:
        self._start_region(name)
        self.history.fault_off("region", name)
        self.history.note(f"region {name} started")

    def kill_region(self, name: str) -> None:
        """SIGKILL the region's process (its store stays)."""
        c = self.clusters[name]
        self.history.fault_on("region", name)
        if c.region is not None:
            c.region.kill()
            c.region = None
        self.history.note(f"region {name} killed")

    def _headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key} if self.api_key is not None else {}

    def _write_probe(self) -> None:
        """A memory written in the first region and awaited in every store: its x_coord
        shows how often each store decremented it."""
        first = self.clusters[self.names[0]].region
        assert first is not None
        status, body = first.request(
            "POST", "/memories", {"text": "federation probe", "y_coord": 0, "x_coord": 1000}
        )
        assert status == 201, (status, body)
        self.probe = Probe(str(body["id"]), float(body["x_coord"]), str(body.get("x_as_of", "")))
        for name in self.names:
            wait_until(partial(self._has_probe, name), 30, f"the probe memory to reach {name}", 0.1)

    def _has_probe(self, name: str) -> bool:
        proc = self.clusters[name].region
        return proc is not None and proc.request("GET", f"/memories/{self.probe_id}")[0] == 200

    @property
    def probe_id(self) -> str:
        assert self.probe is not None
        return self.probe.memory_id

    # -- operators -------------------------------------------------------------------------

    def operator_env_for(self, name: str) -> dict[str, str]:
        c = self.clusters[name]
        return {
            **BED_OPERATOR_ENV,
            "MEMORIA_OPERATOR_ELECTION_NAMESPACE": NAMESPACE,
            "MEMORIA_OPERATOR_CLUSTER_NAME": name,
            "MEMORIA_OPERATOR_PEERS_DIR": str(c.peers_dir),
            "MEMORIA_OPERATOR_MAX_CLOCK_SKEW_SECONDS": repr(self.max_clock_skew),
            **self.operator_env,
            **faketime_env(c.skew),
        }

    def start_operator(self, name: str) -> ManagedProcess:
        """Start the cluster's operator (under libfaketime if its clock is skewed)."""
        c = self.clusters[name]
        if c.operator is not None and c.operator.running:
            return c.operator
        c.operator = start_operator(
            c.plane.kubeconfig,
            c.operator_log,
            self.operator_env_for(name),
            "-n",
            NAMESPACE,
            name=f"operator-{name}",
        )
        self.history.fault_off("operator", name)
        self.history.note(f"operator {name} started (clock skew {c.skew:+g}s)")
        return c.operator

    def kill_operator(self, name: str) -> None:
        c = self.clusters[name]
        self.history.fault_on("operator", name)
        if c.operator is not None:
            c.operator.kill()
            c.operator = None
        self.history.note(f"operator {name} killed")

    def operator_running(self, name: str) -> bool:
        op = self.clusters[name].operator
        return op is not None and op.running

    def skew_clock(self, name: str, seconds: float) -> None:
        """Restart the cluster's operator with its wall clock ``seconds`` off (libfaketime);
        0 restarts it on the true clock. The restart is an operator outage."""
        c = self.clusters[name]
        if seconds:
            libfaketime()  # fail before stopping anything
        self.kill_operator(name)
        c.skew = seconds
        self.start_operator(name)

    # -- clusters --------------------------------------------------------------------------

    def kill_cluster(self, name: str) -> None:
        """The whole cluster dies (SIGKILL): its region process, its operator, kube-apiserver
        and etcd. Data stays for :meth:`restart_cluster`."""
        c = self.clusters[name]
        self.history.fault_on("cluster", name)
        if c.region is not None:
            c.region.kill()
            c.region = None
        if c.operator is not None:
            c.operator.kill()
            c.operator = None
        if c.paused:
            self.resume_apiserver(name)
        c.plane.halt(kill=True)
        c.up = False
        self.history.note(f"cluster {name} killed")

    def restart_cluster(self, name: str) -> None:
        """Bring a killed cluster back: same ports, certificates, tokens and etcd data (the
        peers' kubeconfigs stay valid), then its operator and its region's process."""
        c = self.clusters[name]
        if not c.up:
            c.plane.start()
            c.up = True
        self.start_operator(name)
        if c.region is None or not c.region.running:
            self._start_region(name)
        self.history.fault_off("region", name)
        self.history.fault_off("cluster", name)
        self.history.note(f"cluster {name} restarted")

    def _apiserver_pid(self, name: str) -> int:
        proc = self.clusters[name].plane.process("kube-apiserver")
        if proc is None or proc.pid is None:
            raise RuntimeError(f"no kube-apiserver runs in {name}")
        return proc.pid

    def pause_apiserver(self, name: str) -> None:
        """SIGSTOP the cluster's kube-apiserver: connections hang, nothing is refused."""
        os.kill(self._apiserver_pid(name), signal.SIGSTOP)
        self.clusters[name].paused = True
        self.history.fault_on("apiserver", name)
        self.history.note(f"kube-apiserver {name} paused")

    def resume_apiserver(self, name: str) -> None:
        os.kill(self._apiserver_pid(name), signal.SIGCONT)
        self.clusters[name].paused = False
        self.history.fault_off("apiserver", name)
        self.history.note(f"kube-apiserver {name} resumed")

    # -- links -----------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        """One way: a's operator can no longer reach b's API server (b -> a still works)."""
        self.proxies[(a, b)].cut()
        self.history.fault_on("link", a, b)
        self.history.note(f"link {a} -> {b} cut")

    def heal(self, a: str, b: str, *, both: bool = False) -> None:
        """Undo :meth:`cut` of a -> b (and of b -> a with ``both``)."""
        for x, y in ((a, b), (b, a)) if both else ((a, b),):
            self.proxies[(x, y)].heal()
            self.history.fault_off("link", x, y)
            self.history.note(f"link {x} -> {y} healed")

    def partition(self, a: str, b: str) -> None:
        """Both ways between a and b."""
        self.cut(a, b)
        self.cut(b, a)

    def isolate(self, name: str) -> None:
        """Every link to and from ``name``."""
        for other in self.names:
            if other != name:
                self.partition(name, other)

    def peer_kubeconfig(self, a: str, b: str) -> Path:
        """What a's operator uses to reach b's API server (through the a -> b proxy)."""
        return self.clusters[a].peers_dir / b / "kubeconfig"

    def via(
        self, a: str, b: str, *args: str, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl <args>`` against b's API server as a's operator reaches it (its peer
        token, through the a -> b proxy); never raises for kubectl's exit code."""
        return self.clusters[b].kube.kubectl(
            *args,
            "--request-timeout=5s",
            kubeconfig=self.peer_kubeconfig(a, b),
            check=False,
            timeout=timeout,
        )

    def heal_all(self) -> None:
        for a, b in self.proxies:
            self.heal(a, b)

    # -- observers -------------------------------------------------------------------------

    def kube(self, name: str) -> KubeTarget:
        return self.clusters[name].kube

    def region(self, name: str) -> MemoriaProcess | None:
        return self.clusters[name].region

    def _get(self, c: Cluster, kind: str, obj: str) -> dict[str, Any] | None:
        if not c.up or c.paused:
            return None
        proc = c.kube.kubectl(
            "get",
            kind,
            obj,
            "-n",
            NAMESPACE,
            "-o",
            "json",
            "--request-timeout=5s",
            check=False,
            timeout=15,
        )
        if proc.returncode != 0:
            return None
        found: dict[str, Any] = json.loads(proc.stdout)
        return found

    def lease(self, name: str) -> dict[str, Any] | None:
        """The group's Lease in cluster ``name`` (None: absent or the cluster is down)."""
        return self._get(self.clusters[name], "lease", LEASE)

    def holder(self, name: str) -> str | None:
        spec = (self.lease(name) or {}).get("spec") or {}
        holder: str | None = spec.get("holderIdentity")
        return holder

    def leading(self, name: str) -> bool | None:
        """What the region's /healthz says: does its scheduler lead? None: no answer."""
        proc = self.clusters[name].region
        if proc is None or not proc.running:
            return None
        status, body = proc.request("GET", "/healthz", timeout=2)
        if status not in (200, 503) or not isinstance(body, dict):
            return None
        leading: bool | None = (body.get("scheduler") or {}).get("leading")
        return leading

    def decrements(self, name: str) -> StoreView:
        """What the region's store says: its decrement_log, metadata and the probe's x_coord."""
        c = self.clusters[name]
        store = MemoryStore(c.store_url)
        try:
            with store.db.transaction(write=False) as tx:
                rows = tx.execute(
                    "SELECT date, ran_by, ran_at FROM decrement_log ORDER BY date"
                ).fetchall()
            reading = None
            if self.probe is not None:
                try:
                    x: float | None = store.get_memory(self.probe.memory_id).x_coord
                except MemoryNotFound:
                    x = None
                reading = ProbeReading(self.probe.memory_id, self.probe.x0, self.probe.as_of, x)
            return StoreView(
                name,
                tuple(DecrementRow(str(d), str(b), str(a)) for d, b, a in rows),
                reading,
                store.metadata(),
            )
        finally:
            store.close()

    # -- the clock -------------------------------------------------------------------------

    def scheduler_date(self) -> str:
        """Today by the regions' scheduler clocks (UTC, their default time zone)."""
        now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.clock_offset)
        return now.date().isoformat()

    def advance_day(self, days: int = 1) -> str:
        """Move every region's scheduler clock forward by ``days`` days (PATCH /settings; a
        region that is down gets the new offset when it starts). Regions that say they lead go
        last: a standby whose clock is still behind would refuse the leader's decrement of the
        new date as not due (and not take it later). The leader catches up at once. Returns
        the new date by those clocks."""
        self.clock_offset += days * DAY
        body = {"scheduler.clock_offset_seconds": self.clock_offset}
        running = [n for n in self.names if self._region_running(n)]
        leading = {n for n in running if self.leading(n)}
        for name in sorted(running, key=lambda n: n in leading):
            proc = self.clusters[name].region
            assert proc is not None
            status, answer = proc.request("PATCH", "/settings", body, headers=self._headers())
            if status != 200:
                raise RuntimeError(f"PATCH /settings on {name}: {status} {answer}")
        date = self.scheduler_date()
        self.history.note(f"scheduler clocks advanced {days} day(s) to {date}")
        return date

    def _region_running(self, name: str) -> bool:
        proc = self.clusters[name].region
        return proc is not None and proc.running

    # -- history ---------------------------------------------------------------------------

    @contextmanager
    def recording(self, interval: float = 0.05) -> Iterator[History]:
        """Record every region's /healthz answer every ``interval`` s into :attr:`history`."""
        self.history.interval = interval
        with LeadershipRecorder(self.history, self.leading):
            yield self.history

    def stores(self) -> dict[str, StoreView]:
        return {name: self.decrements(name) for name in self.names}

    def check(self, bound: float, skew: float | None = None) -> list[Violation]:
        """:func:`testbed.history.check` of the history so far and the stores as they are."""
        return check(
            self.history,
            self.stores(),
            bound,
            self.max_clock_skew if skew is None else skew,
        )

    # -- teardown --------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """Every process the bed has running now."""
        out: list[int] = []
        for c in self.clusters.values():
            procs: list[ManagedProcess | None] = [
                *c.plane.processes,
                c.operator,
                c.region.proc if c.region else None,
            ]
            out += [p.pid for p in procs if p is not None and p.running and p.pid]
        redis = self.redis._proc if self.redis is not None else None
        if redis is not None and redis.running and redis.pid:
            out.append(redis.pid)
        return out

    def stop(self) -> None:
        """Stop everything (regions, operators, proxies, control planes, Redis)."""
        for c in self.clusters.values():
            if c.region is not None:
                c.region.stop(timeout=10)
                c.region = None
        for c in self.clusters.values():
            if c.operator is not None:
                c.operator.stop()
                c.operator = None
        for proxy in self.proxies.values():
            proxy.close()
        for c in self.clusters.values():
            if c.paused:
                self.resume_apiserver(c.name)
            c.plane.stop()
            c.up = False
        if self.redis is not None:
            self.redis.destroy()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
