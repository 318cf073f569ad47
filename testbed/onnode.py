"""The user's path on the test bed's node: the chart installed by Helm, Redis as pods (the guide's
primary and ``--replicaof`` replica), MemoriaRegions from our image, and the small probes the
node tests and ``bench/node_failover_bench.py`` share (HTTP without any proxy, Lease holder,
group endpoint addresses, a pod's main process frozen or killed).

Nothing here writes a status: the kubelet runs and probes the pods, the operator (a pod itself)
reports what it sees.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from .binaries import ensure_binaries
from .images import ImageArchive, import_into_containerd, service_image
from .kube import KubeTarget
from .node import RunningNode
from .paths import REPO

CHART = REPO / "charts" / "memoria"
GROUP_ENDPOINT = "memoria-default-rw"
SERVING_LABEL = "memoria.arcafutura.io/serving"
PROMOTE_ANNOTATION = "memoria.arcafutura.io/promote"
HANDOVER_ANNOTATION = "memoria.arcafutura.io/handover-to"  # on the Lease, mid-switchover
SCHEDULER_LEASE = "memoria-scheduler-default"
REGION_UID = 10001
BROKER_UID = 10002  # docker/postgres names it in /etc/passwd (initdb looks it up)

POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": BROKER_UID,
    "runAsGroup": BROKER_UID,
    "fsGroup": BROKER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an HTTP proxy


def eventually(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """``check()`` until truthy (AssertionError and OSError count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, OSError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def http(
    method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 3.0
) -> tuple[int, Any]:
    """(status, JSON body) of one request; HTTP errors are returned, connection errors raise."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http only
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _DIRECT.open(request, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else None
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def helm(kube: KubeTarget, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(ensure_binaries().helm), *args],
        capture_output=True,
        text=True,
        env=kube.env,
        timeout=300,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {proc.stderr}")
    return proc


def split_ref(image: str) -> tuple[str, str]:
    repository, _, tag = image.rpartition(":")
    return repository, tag


def wait_for(kube: KubeTarget, ns: str, what: str, condition: str, timeout: int = 180) -> None:
    """``kubectl wait``; on failure the object's description and the namespace's Events."""
    proc = kube.kubectl(
        "wait",
        "-n",
        ns,
        what,
        f"--for={condition}",
        f"--timeout={timeout}s",
        check=False,
        timeout=timeout + 10,
    )
    if proc.returncode != 0:
        described = kube.kubectl("describe", "-n", ns, what, check=False).stdout
        events = kube.kubectl("get", "events", "-n", ns, check=False).stdout
        raise AssertionError(f"{what} never {condition}: {proc.stderr}\n{described}\n{events}")


def wait_namespace_ready(kube: KubeTarget, ns: str) -> None:
    eventually(
        lambda: kube.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
        30,
        f"the default ServiceAccount of {ns}",
    )


# -- the operator, installed by Helm ----------------------------------------------------------


@dataclass(frozen=True)
class OperatorRelease:
    release: str
    namespace: str

    @property
    def deployment(self) -> str:
        return f"{self.release}-memoria-operator"

    @property
    def election_lease(self) -> str:
        return self.deployment  # MEMORIA_OPERATOR_ELECTION_LEASE_NAME in the chart


def install_operator(
    kube: KubeTarget,
    image: str,
    namespace: str,
    release: str = "memoria",
    *,
    lease_seconds: float = 4,
    renew_seconds: float = 1,
    retry_seconds: float = 0.5,
    extra: tuple[str, ...] = (),
) -> OperatorRelease:
    """``helm install`` the chart with our local image (pullPolicy Never) and wait for the
    operator to be Available (Ready by its real /readyz)."""
    repository, tag = split_ref(image)
    helm(
        kube,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--create-namespace",
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=Never",
        # --set would turn 0.5 into a string, which the chart's schema refuses
        "--set-json",
        "operator.lease="
        + json.dumps(
            {
                "durationSeconds": lease_seconds,
                "renewIntervalSeconds": renew_seconds,
                "retryIntervalSeconds": retry_seconds,
            }
        ),
        "--set",
        "operator.resyncSeconds=5",
        *extra,
    )
    found = OperatorRelease(release, namespace)
    wait_for(kube, namespace, f"deployment/{found.deployment}", "condition=Available", 180)
    return found


def operator_pods(kube: KubeTarget, rel: OperatorRelease) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = kube.get_json(
        "pods", "-n", rel.namespace, "-l", f"app.kubernetes.io/instance={rel.release}"
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def lease_holder(kube: KubeTarget, ns: str, name: str) -> str | None:
    proc = kube.kubectl("get", "lease", name, "-n", ns, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    holder = json.loads(proc.stdout)["spec"].get("holderIdentity")
    return str(holder) if holder else None


# -- Redis, the guide's topology --------------------------------------------------------------


def ensure_redis_image(node: RunningNode) -> ImageArchive:
    """Build (once, cached) and load the Redis image into the node's containerd."""
    return ensure_service_image(node, "redis")


def ensure_service_image(node: RunningNode, name: str) -> ImageArchive:
    """Build (once, cached) and load ``docker/<name>``'s image into the node's containerd."""
    archive = service_image(name)
    socket = node.workdir / "containerd.sock"
    listed = subprocess.run(
        ["ctr", "--address", str(socket), "--namespace", "k8s.io", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if archive.ref not in listed:
        import_into_containerd(socket, [archive])
    return archive


def redis_manifests(name: str, image: str, replica_of: str | None = None) -> list[dict[str, Any]]:
    """A Deployment and a Service ``name``; ``replica_of`` (host) makes it a read-only replica."""
    everywhere = "0.0.0.0"  # noqa: S104 - a pod: its own address on the pod network
    args = ["redis-server", "--bind", everywhere, "--protected-mode", "no"]
    args += ["--dir", "/data", "--save", "", "--appendonly", "no"]
    if replica_of:
        args += ["--replicaof", replica_of, "6379"]
    return broker_manifests(name, image, args, port=6379, memory="128Mi")


def postgres_manifests(name: str, image: str) -> list[dict[str, Any]]:
    """PostgreSQL (``docker/postgres``: database and role ``memoria``, trust on the pod
    network) as a Deployment and a Service ``name``."""
    return broker_manifests(name, image, ["serve-postgres"], port=5432, memory="256Mi")


def deploy_postgres(kube: KubeTarget, ns: str, image: str, name: str = "postgres") -> str:
    """PostgreSQL as a pod; returns its ClusterIP once it accepts connections."""
    for manifest in postgres_manifests(name, image):
        kube.apply(manifest, ns)
    wait_for(kube, ns, f"deployment/{name}", "condition=Available", 180)
    return cluster_ip(kube, ns, name)


def broker_manifests(
    name: str, image: str, args: list[str], *, port: int, memory: str
) -> list[dict[str, Any]]:
    """A Deployment (one non-root, read-only pod with ``/data`` on an emptyDir) and a Service
    ``name`` for a broker listening on ``port``."""
    labels = {"app": name}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": POD_SECURITY,
                    "containers": [
                        {
                            "name": "broker",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "args": args,
                            "ports": [{"containerPort": port, "name": "broker"}],
                            "readinessProbe": {
                                "tcpSocket": {"port": "broker"},
                                "periodSeconds": 2,
                            },
                            "securityContext": CONTAINER_SECURITY,
                            "resources": {
                                "requests": {"cpu": "20m", "memory": "16Mi"},
                                "limits": {"memory": memory},
                            },
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/data"},
                                {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a pod volume
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "data", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": labels, "ports": [{"port": port, "targetPort": "broker"}]},
    }
    return [deployment, service]


def cluster_ip(kube: KubeTarget, ns: str, service: str) -> str:
    return str(kube.get_json("service", service, "-n", ns)["spec"]["clusterIP"])


def deploy_redis_pair(kube: KubeTarget, ns: str, image: str) -> tuple[str, str]:
    """redis-a (primary) and redis-b (``--replicaof`` redis-a's ClusterIP: no cluster DNS
    here); returns their ClusterIPs once both are Available and the replica is in sync."""
    for manifest in redis_manifests("redis-a", image):
        kube.apply(manifest, ns)
    primary = cluster_ip(kube, ns, "redis-a")
    for manifest in redis_manifests("redis-b", image, replica_of=primary):
        kube.apply(manifest, ns)
    replica = cluster_ip(kube, ns, "redis-b")
    for name in ("redis-a", "redis-b"):
        wait_for(kube, ns, f"deployment/{name}", "condition=Available", 180)

    def in_sync() -> bool:
        out = kube.kubectl(
            "exec",
            "-n",
            ns,
            "deploy/redis-b",
            "--",
            "redis-cli",
            "info",
            "replication",
            check=False,
        ).stdout
        return "master_link_status:up" in out

    eventually(in_sync, 60, "redis-b replicating redis-a", 1)
    return primary, replica


# -- regions -----------------------------------------------------------------------------------


def region_manifest(
    name: str,
    role: str,
    broker_ip: str,
    *,
    priority: int,
    unhealthy_after: int,
    ceiling: int = 15,
    backend: str = "redis",
) -> dict[str, Any]:
    """A MemoriaRegion on our image whose sync broker is ``broker_ip``: Redis, or PostgreSQL
    (``docker/postgres``: the guide's journal table in database ``memoria``)."""
    if backend == "postgres":
        sync = {
            "backend": "postgres",
            "connectionUrl": f"postgresql://memoria@{broker_ip}:5432/memoria",
            "table": "infra.memoria_sync_events",
        }
    else:
        sync = {"backend": "redis", "connectionUrl": f"redis://{broker_ip}:6379/0"}
    return {
        "apiVersion": "memoria.arcafutura.io/v1alpha1",
        "kind": "MemoriaRegion",
        "metadata": {"name": name},
        "spec": {
            "region": name,
            "role": role,
            "priority": priority,
            "imagePullPolicy": "Never",
            "sync": {**sync, "realtimeReplication": True},
            "privacy": {"floor": 0, "ceiling": ceiling},
            "store": {"persistence": {"size": "64Mi"}},
            "failover": {"unhealthyAfterSeconds": unhealthy_after},
            "resources": {
                "requests": {"cpu": "50m", "memory": "96Mi"},
                "limits": {"memory": "384Mi"},
            },
        },
    }


def region_pods(kube: KubeTarget, ns: str, region: str) -> list[dict[str, Any]]:
    """The region's pods that are not being deleted."""
    pods: list[dict[str, Any]] = kube.get_json(
        "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={region}"
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready_pod(kube: KubeTarget, ns: str, region: str) -> dict[str, Any] | None:
    for pod in region_pods(kube, ns, region):
        statuses = pod["status"].get("containerStatuses") or []
        if statuses and all(s.get("ready") for s in statuses):
            return pod
    return None


def mreg_row(kube: KubeTarget, ns: str, name: str) -> dict[str, str]:
    """``kubectl get mreg <name>`` as printed (the columns a user reads)."""
    out = kube.kubectl("get", "mreg", name, "-n", ns, "-o", "wide").stdout.splitlines()
    header, row = out[0].split(), out[1].split()
    return dict(zip(header, row, strict=False))


def endpoint_ips(kube: KubeTarget, ns: str, service: str) -> set[str]:
    """The ready addresses of a Service's EndpointSlices."""
    slices = kube.get_json(
        "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={service}"
    )["items"]
    ips: set[str] = set()
    for item in slices:
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready", True):
                ips.update(endpoint.get("addresses") or [])
    return ips


def ctr(node: RunningNode, *args: str) -> str:
    """``ctr`` against the node's own containerd (namespace k8s.io, where CRI keeps its work)."""
    socket = node.workdir / "containerd.sock"
    return subprocess.run(
        ["ctr", "--address", str(socket), "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def container_pid(node: RunningNode, pod: dict[str, Any]) -> int:
    """The host PID of the pod's (first) container's main process, from containerd's task list.

    Signals go from the host: inside the container the app is PID 1 of its namespace, and the
    kernel drops SIGSTOP and SIGKILL sent to a namespace's init from within it."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    for line in ctr(node, "task", "ls").splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == container_id:
            return int(fields[1])
    raise AssertionError(f"no containerd task for {container_id}")


def region_url(kube: KubeTarget, ns: str, region: str) -> str:
    return f"http://{cluster_ip(kube, ns, f'memoria-{region}')}:8080"


def scheduler_leading(pod_ip: str) -> bool:
    """The region pod's /healthz says its scheduler runs (it holds the Lease)."""
    try:
        status, body = http("GET", f"http://{pod_ip}:8080/healthz", timeout=1.0)
    except OSError:
        return False
    scheduler = (body or {}).get("scheduler") or {} if isinstance(body, dict) else {}
    return status == 200 and bool(scheduler.get("leading"))


def forbidden_lines(log: str) -> list[str]:
    """The operator log's lines that report a 403 or Forbidden, except the API server refusing
    new objects in a namespace being deleted (another test's namespace, its region reconciled
    one last time): that is no RBAC gap. A client error spans a few lines (status, reason,
    body), so each report is read with the three lines after it."""
    lines = log.splitlines()
    bad = []
    for i, line in enumerate(lines):
        if " 403" in line or "(403)" in line or "Forbidden" in line or "forbidden" in line:
            block = " ".join(lines[i : i + 4])
            if "NamespaceTerminating" not in block and "is being terminated" not in block:
                bad.append(line)
    return bad


def logs(kube: KubeTarget, ns: str, pod: str, previous: bool = False) -> str:
    args = ["logs", "-n", ns, pod, *(["--previous"] if previous else [])]
    return kube.kubectl(*args, check=False).stdout
