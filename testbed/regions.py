"""Two regions on a Kubernetes API, with real ``memoria serve`` processes as their workloads.

No kubelet runs on the local control plane, so this plays its part: it writes the Deployments'
status, and runs each region's pod as a local ``memoria serve`` process with the environment
the operator rendered into the Deployment, authenticated by a token of the region's own
ServiceAccount (so the per-region Role is exercised for real); ``spec.failover.healthUrl``
points at the process. The brokers are real: a Redis primary with a ``replicaof`` Redis for
region B (the guide's topology), or one PostgreSQL database with a journal table.

Used by the e2e tests, the benchmarks and the demo.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from memoria.contract import API_VERSION, KIND, lease_name
from memoria.store import MemoryStore

from .cluster import env_of, events_for, get, mark_available
from .datastores import PostgresServer, RedisServer
from .kube import KubeTarget
from .processes import free_port, wait_until
from .proxy import TcpProxy
from .rollouts import RolloutPlayer
from .serve import MemoriaProcess

LEASE = lease_name("default")
PG_TABLE = "infra.memoria_sync_events"
NAMES = ("region-a", "region-b")


# where a manifest's sync section points until the bed sets each process's real broker URL
PLACEHOLDER_URLS = {"redis": "redis://redis:6379/0", "postgres": "postgresql://db/memoria"}


def region_manifest(name: str = "r1", *, backend: str = "redis", **spec: Any) -> dict[str, Any]:
    """A MemoriaRegion manifest, the one builder of them in the test bed: named ``name`` (also
    its ``spec.region``), syncing over ``backend`` at a placeholder URL (PostgreSQL with the
    guide's journal table), with ``spec`` (keys as in YAML) laid over that."""
    sync: dict[str, Any] = {"backend": backend, "connectionUrl": PLACEHOLDER_URLS[backend]}
    if backend == "postgres":
        sync.update(table=PG_TABLE, channel="memoria_sync")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"region": name, "sync": sync, **spec},
    }


def dates_due(since: str, zone: str) -> list[str]:
    """The dates after ``since`` (YYYY-MM-DD) up to today in ``zone``: what a region whose
    last decrement was ``since`` catches up once its ``DECREMENT_TZ`` is ``zone``."""
    today = dt.datetime.now(ZoneInfo(zone)).date()
    day = dt.date.fromisoformat(since) + dt.timedelta(days=1)
    out = []
    while day <= today:
        out.append(day.isoformat())
        day += dt.timedelta(days=1)
    return out


def health_failover(port: int, bound: int = 3) -> dict[str, Any]:
    """``spec.failover`` probing a region process on ``port``: unhealthy after ``bound`` s."""
    return {"healthUrl": f"http://127.0.0.1:{port}/healthz", "unhealthyAfterSeconds": bound}


@dataclass
class Brokers:
    """The sync backend both regions use, and where each region connects."""

    backend: str
    urls: dict[str, str]
    redis: dict[str, RedisServer] = field(default_factory=dict)
    postgres: PostgresServer | None = None

    @classmethod
    def start(cls, backend: str) -> Brokers:
        if backend == "postgres":
            server = PostgresServer()
            server.start()
            url = server.create_database("sync")
            return cls("postgres", dict.fromkeys(NAMES, url), postgres=server)
        primary = RedisServer()
        primary.start()
        replica = RedisServer(replica_of=primary)
        replica.start()
        return cls(
            "redis",
            {"region-a": primary.url, "region-b": replica.url},
            redis={"region-a": primary, "region-b": replica},
        )

    def restart(self) -> None:
        """Restart every broker (same ports, same data): listeners must reconnect."""
        if self.postgres is not None:
            self.postgres.restart()
        for server in self.redis.values():
            server.restart()

    def destroy(self) -> None:
        if self.postgres is not None:
            self.postgres.destroy()
        for server in reversed(list(self.redis.values())):
            server.destroy()


@dataclass
class RegionBed:
    kube: KubeTarget
    namespace: str
    brokers: Brokers
    ports: dict[str, int]
    workdir: Path
    processes: dict[str, MemoriaProcess] = field(default_factory=dict)
    proxies: dict[str, TcpProxy] = field(default_factory=dict)
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    # regions with spec.scheduler.control: env, rolled out by the rollout player
    env_controlled: list[str] = field(default_factory=list)
    rollouts: RolloutPlayer | None = None

    def lease(self) -> dict[str, Any] | None:
        return get(self.kube, "lease", LEASE, self.namespace)

    def holder(self) -> str | None:
        lease = self.lease()
        holder: str | None = ((lease or {}).get("spec") or {}).get("holderIdentity")
        return holder

    def region(self, name: str) -> dict[str, Any]:
        found = get(self.kube, "mreg", name, self.namespace)
        assert found is not None, f"MemoriaRegion {name} not found"
        return found

    def kubeconfig_for(self, name: str, via_proxy: bool = False) -> Path:
        """A kubeconfig with a token of the region's own ServiceAccount."""
        server = None
        if via_proxy:
            proxy = self.proxies.get(name)
            if proxy is None:
                port = int(self.kube.server.rsplit(":", 1)[1])
                proxy = self.proxies[name] = TcpProxy(port)
            server = f"https://127.0.0.1:{proxy.port}"
        return self.kube.token_kubeconfig(
            f"memoria-{name}",
            self.namespace,
            self.workdir / f"{name}.kubeconfig",
            duration="2h",
            server=server,
        )

    def store_url(self, name: str) -> str:
        """The region's own SQLite store (unless ``extra_env`` points it elsewhere)."""
        return f"sqlite:///{self.workdir / name / 'memoria.db'}"

    def store_metadata(self, name: str) -> dict[str, str]:
        """The ``service_metadata`` of the region's own store: who decremented which day."""
        store = MemoryStore(self.store_url(name))
        try:
            return store.metadata()
        finally:
            store.close()

    def process_env(
        self, name: str, via_proxy: bool = False, deployment: dict[str, Any] | None = None
    ) -> dict[str, str]:
        """The env the operator rendered into the region's Deployment (``deployment``, else as
        read now), adapted to run here."""
        dep = deployment or wait_until(
            lambda: get(self.kube, "deployment", f"memoria-{name}", self.namespace),
            what=f"deployment of {name}",
        )
        assert dep is not None  # wait_until returns only what is truthy
        env = {k: v for k, v in env_of(dep).items() if isinstance(v, str)}
        env.update(
            {
                "MEMORIA_SYNC__CONNECTION_URL": self.brokers.urls[name],
                "MEMORIA_DATABASE__CONNECTION_STRING": self.store_url(name),
            }
        )
        if "MEMORIA_LEADERSHIP__LEASE_NAME" in env:  # an env region runs in the guide's mode
            env["MEMORIA_LEADERSHIP__KUBECONFIG"] = str(self.kubeconfig_for(name, via_proxy))
        env.pop("MEMORIA_HOST", None)
        env.pop("MEMORIA_PORT", None)
        env.update(self.extra_env.get(name, {}))
        return env

    def bring_up(self, start_processes: bool = True) -> None:
        """With an operator running: wait for the Deployments, play kubelet (status), and run
        each region's process."""
        leased = [n for n in self.ports if n not in self.env_controlled]
        for name in leased:
            deployment = f"memoria-{name}"
            wait_until(
                partial(get, self.kube, "deployment", deployment, self.namespace),
                what=f"deployment of {name}",
            )
            mark_available(self.kube, self.namespace, deployment)
        if start_processes:
            for name in leased:
                self.start(name)
        if self.env_controlled and self.rollouts is None:
            # their processes are the rollout player's: it starts each at its first rollout
            self.rollouts = RolloutPlayer(self, self.env_controlled)
            self.rollouts.start()
            for name in self.env_controlled:
                wait_until(partial(self._running, name), 60, f"the first rollout of {name}")

    def _running(self, name: str) -> bool:
        proc = self.processes.get(name)
        return proc is not None and proc.running

    def stop_rollouts(self) -> None:
        if self.rollouts is not None:
            self.rollouts.stop()

    def start(
        self, name: str, via_proxy: bool = False, deployment: dict[str, Any] | None = None
    ) -> MemoriaProcess:
        (self.workdir / name).mkdir(exist_ok=True)
        proc = MemoriaProcess(
            name,
            self.process_env(name, via_proxy, deployment),
            port=self.ports[name],
            workdir=self.workdir / name,
        )
        proc.start()
        self.processes[name] = proc
        return proc

    def leading(self, name: str) -> bool | None:
        proc = self.processes.get(name)
        if proc is None or not proc.running:
            return None
        health = proc.health()
        leading: bool | None = (health.get("scheduler") or {}).get("leading")
        return leading

    def scheduling(self, name: str) -> bool | None:
        """Whether the region's decrement timer is armed: what matters in the guide's mode,
        where a region without a Lease says it leads and DISABLE_SCHEDULERS decides."""
        proc = self.processes.get(name)
        if proc is None or not proc.running:
            return None
        armed: bool | None = (proc.health().get("scheduler") or {}).get("armed")
        return armed

    def wait_leader(self, name: str, timeout: float = 20) -> None:
        """``name`` holds the Lease, its scheduler leads, and every region's status says so
        (the operator writes the statuses, then its Events, a moment after the Lease)."""
        key = f"{self.namespace}/{name}"
        wait_until(lambda: self.holder() == key, timeout, f"{key} to hold the Lease")
        wait_until(lambda: self.leading(name) is True, timeout, f"{name}'s scheduler to lead")
        wait_until(
            lambda: all(
                (self.region(n).get("status", {}).get("leadership") or {}).get("holder") == key
                for n in self.ports
            ),
            timeout,
            f"every region's status to name {key} the holder",
        )

    def events(self, name: str) -> list[str]:
        """The reasons of the Events about region ``name``, oldest first."""
        return [e["reason"] for e in events_for(self.kube, self.namespace, name)]

    def wait_events(self, name: str, *reasons: str, timeout: float = 10) -> list[str]:
        """:meth:`events` once it holds every one of ``reasons``: the operator posts an Event
        just after the change it reports, so a test that saw the change waits for it."""

        def seen() -> list[str]:
            found = self.events(name)
            return found if set(reasons) <= set(found) else []

        return wait_until(seen, timeout, f"Events {', '.join(reasons)} on {name}")


class LeadershipSampler:
    """Polls every process's /healthz in a thread, recording who says it leads."""

    def __init__(
        self,
        bed: RegionBed,
        names: tuple[str, ...],
        interval: float = 0.02,
        *,
        armed: bool = False,
    ) -> None:
        """``armed``: sample whether each region's decrement timer is armed rather than whether
        it says it leads (the guide's mode says so whenever no Lease is configured)."""
        self.bed, self.names, self.interval = bed, names, interval
        self._probe = bed.scheduling if armed else bed.leading
        self.samples: list[tuple[float, dict[str, bool | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), {n: self._probe(n) for n in self.names}))
            time.sleep(self.interval)

    def __enter__(self) -> LeadershipSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def both_leading(self) -> list[float]:
        return [t for t, s in self.samples if sum(1 for v in s.values() if v) > 1]


def leadership_log(proc: MemoriaProcess) -> list[tuple[str, bool]]:
    """(timestamp, leads?) lines the runtime logged, in order."""
    out = []
    for line in proc.log_path.read_text().splitlines():
        m = re.match(
            r"(\S+ \S+) INFO memoria.scheduler: leadership: this region (leads|does not)", line
        )
        if m:
            out.append((m.group(1), m.group(2) == "leads"))
    return out


def _each(items: dict[str, Any], action: Callable[[Any], None]) -> None:
    for item in list(items.values()):
        action(item)


@contextmanager
def region_bed(
    kube: KubeTarget,
    namespace: str,
    tmp: Path,
    *,
    bound: int = 3,
    start_processes: bool = True,
    operator: Callable[[], AbstractContextManager[Any]] | None = None,
    backend: str = "redis",
    privacy: dict[str, dict[str, int]] | None = None,
    scheduler: dict[str, dict[str, Any]] | None = None,
) -> Iterator[RegionBed]:
    """Regions region-a (leader, priority 200) and region-b (standby, priority 100).

    ``operator``: a factory of a context that runs the operator for the whole bed; without it
    the caller runs one and calls :meth:`RegionBed.bring_up` itself. ``scheduler``: each
    region's ``spec.scheduler``; regions with ``control: env`` are rolled out by a
    :class:`~testbed.rollouts.RolloutPlayer`.
    """
    brokers = Brokers.start(backend)
    ports = {name: free_port() for name in NAMES}
    bed = RegionBed(kube, namespace, brokers, ports, tmp)
    bed.env_controlled = [
        n for n, s in (scheduler or {}).items() if s.get("control") == "env" and n in NAMES
    ]
    roles = {"region-a": ("leader", 200), "region-b": ("standby", 100)}
    for name, (role, priority) in roles.items():
        extra: dict[str, Any] = {"privacy": privacy[name]} if privacy and name in privacy else {}
        if scheduler and name in scheduler:
            extra["scheduler"] = scheduler[name]
        manifest = region_manifest(
            name,
            backend=backend,
            role=role,
            priority=priority,
            failover=health_failover(ports[name], bound),
            **extra,
        )
        kube.apply(manifest, namespace)
    with ExitStack() as stack:
        stack.callback(brokers.destroy)
        stack.callback(_each, bed.proxies, TcpProxy.close)
        stack.callback(_each, bed.processes, MemoriaProcess.stop)
        stack.callback(bed.stop_rollouts)  # first: no rollout starts a process after this
        if operator is not None:
            stack.enter_context(operator())
            bed.bring_up(start_processes)
        yield bed
