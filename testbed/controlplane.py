"""A local Kubernetes control plane made of real processes: etcd, kube-apiserver and (for owner
references to be honoured) kube-controller-manager with only its garbage-collector and namespace
controllers. envtest-style: generated PKI, RBAC authorization, an admin client certificate, a
service-account signing key, a kubeconfig; everything on free loopback ports in one temp dir.

With ``node_ip`` it serves a real node (:mod:`testbed.node`): kube-apiserver also listens on, and
advertises, that address so pods reach it through the ``kubernetes`` Service, talks to the
kubelet with a client certificate (``kubectl logs``/``exec``), authorizes kubelets with the Node
authorizer, and kube-controller-manager runs the controllers pods need.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .binaries import Binaries, ensure_binaries
from .certs import CertificateAuthority, service_account_signing_key
from .processes import ManagedProcess, free_port, terminate_pid, wait_until

HOST = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/24"  # routed by kube-proxy on the node; process-only: only sizes IPs
KUBERNETES_SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR

# What pods on a real node need from kube-controller-manager, beyond garbage collection: the node
# lifecycle (else the not-ready taint stays), workloads, endpoint slices for Services, service
# account tokens and the root CA config map every pod mounts, PersistentVolume binding (with the
# hostPath provisioner) and the protection finalizers' removal, pod GC, role aggregation.
NODE_CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "node-lifecycle-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "job-controller",
    "endpointslice-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "pod-garbage-collector-controller",
    "clusterrole-aggregation-controller",
)


def kubeconfig_document(
    server: str, ca_pem: bytes, user: str, **credentials: str
) -> dict[str, Any]:
    """A one-context kubeconfig; ``credentials`` are the user's fields (client cert, token)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "memoria-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [
            {"name": "memoria-local", "context": {"cluster": "memoria-local", "user": user}}
        ],
        "current-context": "memoria-local",
    }


class LocalControlPlane:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(
        self,
        binaries: Binaries | None = None,
        workdir: Path | None = None,
        controller_manager: bool = True,
        node_ip: str | None = None,
    ) -> None:
        self.binaries = binaries or ensure_binaries(("etcd", "kubernetes"))
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="memoria-testenv-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.with_controller_manager = controller_manager
        self.node_ip = node_ip
        self.etcd_port = free_port(HOST)
        self.etcd_peer_port = free_port(HOST)
        # with a node the API server listens on every address (pods reach it on the node IP)
        self.api_port = free_port("0.0.0.0" if node_ip else HOST)  # noqa: S104
        self.server = f"https://{HOST}:{self.api_port}"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.ca = CertificateAuthority()
        self.processes: list[ManagedProcess] = []
        self._pki: dict[str, Path] | None = None  # written by the first start, kept by halt

    # -- configuration ---------------------------------------------------------------------

    def _write_pki(self) -> dict[str, Path]:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {"ca": pki / "ca.crt"}
        paths["ca"].write_bytes(self.ca.cert_pem)
        hosts = [HOST, "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        if self.node_ip:
            hosts += [self.node_ip, KUBERNETES_SERVICE_IP, "kubernetes.default.svc.cluster.local"]
            # kube-apiserver -> kubelet (logs, exec, port-forward); the kubelet checks it against
            # its client CA, which is this CA
            paths["kubelet_client_cert"], paths["kubelet_client_key"] = self.ca.client(
                "kube-apiserver-kubelet-client", ("system:masters",)
            ).write(pki, "apiserver-kubelet-client")
        paths["serving_cert"], paths["serving_key"] = self.ca.serving(hosts).write(pki, "apiserver")
        paths["admin_cert"], paths["admin_key"] = self.ca.client(
            "memoria-admin", ("system:masters",)
        ).write(pki, "admin")
        # In a real cluster the garbage collector acts through its own service account with
        # read/delete rights on every resource; here one admin identity stands in for that.
        paths["kcm_cert"], paths["kcm_key"] = self.ca.client(
            "system:kube-controller-manager", ("system:masters",)
        ).write(pki, "controller-manager")
        paths["sa_pub"], paths["sa_key"] = service_account_signing_key().write(pki, "sa")
        return paths

    def _client_kubeconfig(self, path: Path, user: str, cert: Path, key: Path) -> None:
        doc = kubeconfig_document(
            self.server,
            self.ca.cert_pem,
            user,
            **{
                "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
                "client-key-data": base64.b64encode(key.read_bytes()).decode(),
            },
        )
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)

    def _etcd(self) -> ManagedProcess:
        data = self.workdir / "etcd-data"
        client = f"http://{HOST}:{self.etcd_port}"
        peer = f"http://{HOST}:{self.etcd_peer_port}"
        argv = [
            str(self.binaries.etcd),
            "--name=memoria-local",
            f"--data-dir={data}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=memoria-local={peer}",
            "--listen-metrics-urls=",
            # test data only: durability across power loss is not needed, speed is
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        return ManagedProcess("etcd", argv, self.workdir / "etcd.log")

    def _apiserver(self, pki: dict[str, Path]) -> ManagedProcess:
        argv = [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers=http://{HOST}:{self.etcd_port}",
            *self._apiserver_network_args(pki),
            f"--secure-port={self.api_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki['serving_cert']}",
            f"--tls-private-key-file={pki['serving_key']}",
            f"--client-ca-file={pki['ca']}",
            f"--service-account-key-file={pki['sa_pub']}",
            f"--service-account-signing-key-file={pki['sa_key']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=0",
        ]
        return ManagedProcess("kube-apiserver", argv, self.workdir / "kube-apiserver.log")

    def _apiserver_network_args(self, pki: dict[str, Path]) -> list[str]:
        if not self.node_ip:
            return [
                f"--bind-address={HOST}",
                f"--advertise-address={HOST}",
                "--authorization-mode=RBAC",
                # the kubernetes Service cannot point at loopback; nothing in-cluster needs it
                "--endpoint-reconciler-type=none",
            ]
        return [
            # every address: loopback for host-side clients, the node IP for pods (through the
            # kubernetes Service, whose endpoint is the advertised address); testbed.node keeps
            # other interfaces out with an iptables rule
            "--bind-address=0.0.0.0",
            f"--advertise-address={self.node_ip}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={pki['kubelet_client_cert']}",
            f"--kubelet-client-key={pki['kubelet_client_key']}",
            f"--kubelet-certificate-authority={pki['ca']}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _controller_manager(self, kubeconfig: Path) -> ManagedProcess:
        argv = [
            str(self.binaries.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            *self._controller_args(),
            "--leader-elect=false",
            # no front-proxy CA here: do not look for one (it only fills the log with errors)
            "--authentication-skip-lookup=true",
            f"--bind-address={HOST}",
            f"--secure-port={free_port(HOST)}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
            "--v=0",
        ]
        return ManagedProcess(
            "kube-controller-manager", argv, self.workdir / "kube-controller-manager.log"
        )

    def _controller_args(self) -> list[str]:
        if not self.node_ip:
            # Deployments stay as the operator writes them (no kubelet would run their pods);
            # the garbage collector makes owner references real, the namespace controller lets
            # test namespaces be deleted.
            return ["--controllers=garbagecollector,namespace"]
        pki = self.workdir / "pki"
        return [
            f"--controllers={','.join(NODE_CONTROLLERS)}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            # PersistentVolumeClaims get hostPath volumes under /tmp/hostpath_pv: one node only
            "--enable-hostpath-provisioner",
            "--node-monitor-period=2s",
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        ctx.load_cert_chain(
            str(self.workdir / "pki" / "admin.crt"), str(self.workdir / "pki" / "admin.key")
        )
        return ctx

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(  # noqa: S310 - https to our own loopback server
                self.server + path, context=self._ssl_context(), timeout=5
            ) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            return 0, str(exc)

    def ready(self) -> bool:
        status, _ = self._get("/readyz")
        return status == 200

    def start(self, timeout: float = 120.0, *, detached: bool = False) -> None:
        """Start etcd, kube-apiserver and (if asked) kube-controller-manager. After
        :meth:`halt` this starts the same control plane again: same ports, certificates,
        service-account signing key and etcd data, so kubeconfigs and tokens made before stay
        valid."""
        pki = self._pki = self._pki or self._write_pki()
        self._client_kubeconfig(
            self.kubeconfig, "memoria-admin", pki["admin_cert"], pki["admin_key"]
        )
        etcd = self._etcd()
        self.processes.append(etcd)
        etcd.start(detached=detached)
        apiserver = self._apiserver(pki)
        self.processes.append(apiserver)
        apiserver.start(detached=detached)

        def tails() -> str:
            return "\n".join(p.log_tail() for p in self.processes)

        def up() -> bool:
            for p in self.processes:
                if not p.running:
                    raise RuntimeError(f"{p.name} exited during start-up\n{tails()}")
            return self.ready()

        try:
            wait_until(up, timeout, f"kube-apiserver {self.server}/readyz", 0.25, tails)
            if self.with_controller_manager:
                kcm_config = self.workdir / "controller-manager.kubeconfig"
                self._client_kubeconfig(
                    kcm_config, "system:kube-controller-manager", pki["kcm_cert"], pki["kcm_key"]
                )
                kcm = self._controller_manager(kcm_config)
                self.processes.append(kcm)
                kcm.start(detached=detached)
        except BaseException:
            self.stop()
            raise
        self._write_state()

    def _write_state(self) -> None:
        state = {
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "workdir": str(self.workdir),
            "processes": [
                {"name": p.name, "pid": p.pid, "binary": p.argv[0]} for p in self.processes
            ],
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2))

    def stop(self) -> None:
        """Stop every process (newest first) and remove the working directory."""
        self.halt()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def halt(self, *, kill: bool = False) -> None:
        """Stop every process (newest first; SIGKILL with ``kill``, as a crash) and keep the
        working directory, so that :meth:`start` brings the same control plane back."""
        for proc in reversed(self.processes):
            if kill:
                proc.kill()
            else:
                proc.stop()
        self.processes.clear()

    def process(self, name: str) -> ManagedProcess | None:
        """The running process called ``name`` (``etcd``, ``kube-apiserver``, ...), if any."""
        return next((p for p in self.processes if p.name == name), None)

    def __enter__(self) -> LocalControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- identities --------------------------------------------------------------------------

    def kubeconfig_for_user(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig authenticating as ``user`` by a client certificate signed by the CA."""
        safe = "".join(c if c.isalnum() else "-" for c in user)
        cert, key = self.ca.client(user, groups).write(self.workdir / "pki", f"user-{safe}")
        path = self.workdir / f"user-{safe}.kubeconfig"
        self._client_kubeconfig(path, user, cert, key)
        return path


def stop_from_state(workdir: Path) -> list[str]:
    """Stop a control plane started detached (``testenv up``) from its state file."""
    state = json.loads((workdir / "state.json").read_text())
    stopped = []
    for proc in reversed(state["processes"]):
        if proc["pid"] and terminate_pid(proc["pid"], proc["binary"]):
            stopped.append(proc["name"])
    shutil.rmtree(workdir, ignore_errors=True)
    return stopped
