"""A real one-node Kubernetes on this machine: the control plane of :mod:`testbed.controlplane`
plus containerd, CNI, kubelet, kube-proxy and kube-scheduler, running pods from images built
here (:mod:`testbed.images`). Needs root, and the Debian packages and binaries that
``hack/bootstrap.sh`` installs and builds. The settings follow ``shared/reference/real-node.md``.

What it makes, all of it removed again by :meth:`NodeCluster.stop` (and by the next start, should
a run have crashed: nothing depends on what an earlier run left behind):

* an interface ``memoria0`` (dummy, or a port-less bridge) holding the node IP: kube-apiserver
  listens there too and advertises it, so pods reach the API through the ``kubernetes``
  Service; the kubelet serves on it (``kubectl logs``/``exec``); host-side clients keep using
  loopback;
* a containerd of its own (config, socket, root and state under the node's directory, never the
  system's or dockerd's) with the CRI settings this machine needs;
* the CNI bridge ``memoria-cni0`` for pods in 10.88.0.0/16 (bridge + firewall + portmap);
  pods have no way out of the machine: no masquerading, and an iptables chain rejects forwarded
  traffic from the pod network to anything but the pod network;
* iptables chains ``MEMORIA-*`` (ours), ``CNI-*`` (the plugins') and ``KUBE-*`` (kube-proxy's
  and the kubelet's), removed on stop; the cgroup ``/memoria-node`` in every hierarchy, under
  which the kubelet puts every pod;
* a default StorageClass ``standard`` served by kube-controller-manager's hostPath provisioner
  (volumes under /tmp/hostpath_pv, opened to non-root pods by :mod:`testbed.hostpath`).

One node per machine: its names (interface, bridge, chains, cgroup) are fixed. A second start
while one is up fails with :class:`NodeBusy`, unless the first one's owner is gone (then it is
cleaned up as a crash's leftovers).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .binaries import (
    Binaries,
    BinariesUnavailable,
    NodeBinaries,
    ensure_binaries,
    ensure_node_binaries,
    k8s_version,
)
from .controlplane import HOST, SERVICE_CIDR, LocalControlPlane
from .images import (
    CACHE_ROOT,
    LOCAL,
    ImageArchive,
    import_into_containerd,
    pause_image,
    project_image,
)
from .images import unmount_under as _unmount_under
from .kube import KubeTarget
from .paths import REPO
from .processes import ManagedProcess, free_port, terminate_pids, wait_until

NODE_NAME = "memoria-node"
NODE_IP = os.environ.get("MEMORIA_NODE_IP", "10.87.0.1")
NODE_INTERFACE = "memoria0"
POD_CIDR = "10.88.0.0/16"
CNI_BRIDGE = "memoria-cni0"
CNI_NETWORK = "memoria-node"
CGROUP_ROOT = "memoria-node"
ADMIN_CHAIN = "MEMORIA-ADMIN"  # the firewall plugin's administrator chain, evaluated first
INPUT_CHAIN = "MEMORIA-INPUT"
CHAIN_PREFIXES = ("MEMORIA-", "CNI-", "KUBE-")
STORAGE_CLASS = "standard"
HOSTPATH_PV_DIR = Path("/tmp/hostpath_pv")  # noqa: S108 - where the hostPath provisioner writes
NODE_DIR = CACHE_ROOT / "node"
LAST_LOGS = CACHE_ROOT / "node-last-logs"  # the logs of the last node that stopped or failed
LOCK = CACHE_ROOT / "node.lock"
CNI_PLUGIN_DIR = Path("/usr/lib/cni")
SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")

# stop order, in stages whose processes stop together: the node's processes and the API server
# first (the API server's shutdown removes its endpoint from etcd: it hangs without etcd), then
# etcd; containerd last, after the pods' processes are gone
_STOP_STAGES = (
    (
        "hostpath-permissions",
        "kubelet",
        "kube-proxy",
        "kube-scheduler",
        "kube-controller-manager",
        "kube-apiserver",
    ),
    ("etcd",),
)
_CONTAINERD = ("containerd-images", "containerd")


class NodeBusy(RuntimeError):
    """Another live test bed owns the node (this machine runs one at a time)."""


class NodeUnavailable(RuntimeError):
    """This machine cannot run the node (not root, or a package is missing)."""


def _log(message: str) -> None:
    print(f"[node] {message}", file=sys.stderr, flush=True)


def _run(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, timeout=120
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(map(str, argv))} failed: {proc.stderr.strip()}")
    return proc


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run the node; empty when it can."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the node makes interfaces, iptables rules, mounts and cgroups)")
    for command in ("containerd", "runc", "ctr", "iptables", "ip", "dockerd", "debootstrap"):
        if not shutil.which(command):
            missing.append(command)
    for plugin in ("bridge", "host-local", "firewall", "portmap", "loopback"):
        if not (CNI_PLUGIN_DIR / plugin).exists():
            missing.append(f"{CNI_PLUGIN_DIR / plugin} (containernetworking-plugins)")
    if not Path("/proc/sys/net/bridge").exists():
        missing.append("the br_netfilter kernel module (/proc/sys/net/bridge)")
    return missing


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def read_state(workdir: Path = NODE_DIR) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((workdir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state


# -- the pieces' configuration ---------------------------------------------------------------


def containerd_root() -> Path:
    """The node containerd's root: its image store, kept between runs as a cache (unpacking our
    image takes 20-30 s, deleting it 7 s), keyed by containerd's version. Nothing else in it
    survives a start: :meth:`NodeCluster._prepare_images` deletes every container first."""
    version = _run("containerd", "--version").stdout.split()[2]
    return CACHE_ROOT / f"containerd-{version}"


def containerd_config(workdir: Path, pause_ref: str, root: Path, cri: bool = True) -> str:
    """containerd's config (version 2): its own root, state and sockets, CRI for this machine
    (``cri=False``: the image store alone, for maintenance before the kubelet sees it)."""
    disabled = [
        # no snapshotters this machine cannot use (they only fill the log)
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
    ]
    if not cri:
        disabled.append("io.containerd.grpc.v1.cri")
    section = '[plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root}"
state = "{workdir / "containerd" / "state"}"
disabled_plugins = {json.dumps(disabled)}

[grpc]
  address = "{workdir / "containerd.sock"}"

[ttrpc]
  address = "{workdir / "containerd.sock"}.ttrpc"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{workdir / "containerd" / "opt"}"

  {section}]
    # the pod sandbox image, built locally: nothing is ever pulled
    sandbox_image = "{pause_ref}"
    # no CAP_SYS_RESOURCE here: without this every sandbox fails with
    # "runc create failed: ... can't get final child's PID from pipe: EOF"
    restrict_oom_score_adj = true
    # pods' network namespaces under our state dir, so a stop can find and unmount them
    netns_mounts_under_state_dir = true
    enable_selinux = false
    stream_server_address = "{HOST}"
    stream_server_port = "0"
    tolerate_missing_hugetlb_controller = true
    disable_hugetlb_controller = true

    {section}.containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      {section}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        {section}.containerd.runtimes.runc.options]
          SystemdCgroup = false

    {section}.cni]
      bin_dir = "{CNI_PLUGIN_DIR}"
      conf_dir = "{workdir / "cni" / "net.d"}"
      max_conf_num = 1
"""


def cni_config(workdir: Path) -> dict[str, Any]:
    """bridge (host-local IPAM) + firewall + portmap. No ipMasq: pods talk to each other, the
    node and Services, never beyond the machine."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    # the default route leads to the bridge: ClusterIPs and the node IP
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(workdir / "cni" / "ipam"),
                },
            },
            # needed where something (dockerd) set the FORWARD policy to DROP; its admin chain
            # holds our egress rule
            {"type": "firewall", "backend": "iptables", "iptablesAdminChainName": ADMIN_CHAIN},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(workdir: Path, pki: Path, port: int, healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{workdir / 'containerd.sock'}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        # this machine: swap may be on, cgroup v1 hierarchies ("kubelet is configured to not
        # run on a host using cgroup v1" otherwise), no CAP_SYS_RESOURCE for a negative OOM score
        "failSwapOn": False,
        "failCgroupV1": False,
        "oomScoreAdj": 0,
        "authentication": {
            "x509": {"clientCAFile": str(pki / "ca.crt")},
            "webhook": {"enabled": False},
            "anonymous": {"enabled": False},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": HOST,
        "healthzPort": healthz_port,
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        # no cluster DNS; and pods must not inherit this machine's resolver (off-machine)
        "clusterDomain": "cluster.local",
        "resolvConf": "",
        "podLogsDir": str(workdir / "pod-logs"),
        "volumePluginDir": str(workdir / "kubelet" / "volume-plugins"),
        # images are imported, never pulled: image GC must not delete them; and a shared disk
        # that is fuller than usual must not evict the tests' pods
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "maxPods": 110,
        "registerNode": True,
        "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "10s",
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        # kube-proxy applies at most one endpoint change per minSyncPeriod (1 s by default):
        # a switchover takes the old leader out and then puts the new one in, two changes, so
        # the default alone makes a 1 s client-visible gap (docs/leadership.md)
        "iptables": {"minSyncPeriod": "100ms"},
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"{HOST}:{healthz_port}",
        "metricsBindAddress": f"{HOST}:{metrics_port}",
        "clusterCIDR": POD_CIDR,
        "detectLocalMode": "ClusterCIDR",
        # NodePorts on the node IP only: no route_localnet sysctl change for loopback NodePorts
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "oomScoreAdj": 0,
        # leave the machine's conntrack settings alone
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


# -- host changes: interface, sysctls, iptables, cgroups -------------------------------------


def _iptables(*args: str, check: bool = True, tool: str = "iptables") -> str:
    return _run(tool, "-w", "5", *args, check=check).stdout


def remove_chains(prefixes: tuple[str, ...] = CHAIN_PREFIXES) -> list[str]:
    """Delete every iptables chain whose name starts with one of ``prefixes``, and the rules of
    other chains that jump to them, in every table, IPv4 and IPv6."""
    removed = []
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        for table in ("filter", "nat", "mangle", "raw"):
            listing = _run(tool, "-w", "5", "-t", table, "-S", check=False)
            if listing.returncode != 0:
                continue
            lines = listing.stdout.splitlines()
            ours = {
                line.split()[1]
                for line in lines
                if line.startswith("-N ") and line.split()[1].startswith(prefixes)
            }
            if not ours:
                continue
            for line in lines:
                if not line.startswith("-A "):
                    continue
                parts = shlex.split(line)
                target = next(
                    (parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("-j", "-g")), None
                )
                if parts[1] not in ours and target in ours:
                    _iptables("-t", table, "-D", *parts[1:], check=False, tool=tool)
            for chain in ours:
                _iptables("-t", table, "-F", chain, check=False, tool=tool)
            for chain in ours:
                _iptables("-t", table, "-X", chain, check=False, tool=tool)
            removed += [f"{tool}/{table}/{c}" for c in sorted(ours)]
    return removed


def _guard_rules(api_port: int, kubelet_port: int) -> None:
    """Pods may not leave the pod network except to this machine (the firewall plugin's admin
    chain); the API server and the kubelet answer loopback and pods only."""
    _iptables("-N", ADMIN_CHAIN)
    _iptables("-A", ADMIN_CHAIN, "-s", POD_CIDR, "-d", POD_CIDR, "-j", "RETURN")
    for direction in ("-s", "-d"):
        _iptables("-A", ADMIN_CHAIN, direction, POD_CIDR, "-j", "REJECT")
    _iptables("-N", INPUT_CHAIN)
    for interface in ("lo", CNI_BRIDGE, NODE_INTERFACE):
        _iptables("-A", INPUT_CHAIN, "-i", interface, "-j", "RETURN")
    for port in (api_port, kubelet_port):
        _iptables("-A", INPUT_CHAIN, "-p", "tcp", "--dport", str(port), "-j", "DROP")
    _iptables("-I", "INPUT", "1", "-j", INPUT_CHAIN)


def _read_sysctl(name: str) -> str:
    return Path("/proc/sys", name).read_text().strip()


def _write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", name).write_text(value)


def cgroup_mounts() -> list[Path]:
    """Mount points of the cgroup hierarchies (v1 controllers, named, and v2)."""
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] in ("cgroup", "cgroup2"):
            mounts.append(Path(fields[1]))
    return mounts


def _make_cgroup_root() -> None:
    for mount in cgroup_mounts():
        path = mount / CGROUP_ROOT
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            # a new cpuset starts empty: give it the parent's CPUs and memory nodes
            if (path / name).exists() and not (path / name).read_text().strip():
                (path / name).write_text((mount / name).read_text())


def kill_cgroup_tree(root: str = CGROUP_ROOT, timeout: float = 15.0) -> int:
    """SIGKILL every process in ``/<root>`` (each hierarchy), then remove its cgroups."""
    tops = [m / root for m in cgroup_mounts() if (m / root).is_dir()]
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while tops and time.monotonic() < deadline:
        # the tree changes under us (containerd removes the cgroups of exiting containers):
        # os.walk skips what vanished
        for top in tops:
            for dirpath, _, files in os.walk(top):
                if "cgroup.procs" not in files:
                    continue
                with contextlib.suppress(OSError, ValueError):
                    for pid in map(int, Path(dirpath, "cgroup.procs").read_text().split()):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
        for top in tops:
            for dirpath, _, _ in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        tops = [top for top in tops if top.exists()]
        if tops:
            time.sleep(0.2)
    return len(killed)


_HOSTPATH_MODULE = "testbed.hostpath"

# programs of ours that may name the node's directory on their command line
_OUR_PROGRAMS = frozenset(
    {
        "containerd",
        "containerd-shim",
        "containerd-shim-runc-v2",
        "runc",
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
    }
)


def _kill_referencing(text: str) -> int:
    """SIGKILL our programs whose command line mentions ``text``: containerd shims of our
    containerd (they outlive it on purpose), a process the state file missed."""
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            program = Path(os.readlink(proc / "exe")).name.removesuffix(" (deleted)")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ours = program in _OUR_PROGRAMS and text in cmdline
        if ours or (program.startswith("python") and f"-m {_HOSTPATH_MODULE} " in cmdline):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    return killed


def _keep_logs(workdir: Path) -> None:
    logs = sorted(workdir.glob("*.log")) + sorted(workdir.glob("control-plane/*.log"))
    if not logs:
        return
    shutil.rmtree(LAST_LOGS, ignore_errors=True)
    LAST_LOGS.mkdir(parents=True)
    for log in logs:
        with contextlib.suppress(OSError):
            shutil.copy2(log, LAST_LOGS / log.name)


def teardown(workdir: Path = NODE_DIR) -> list[str]:
    """Remove everything a node made, from its state file and from what is found: processes,
    pods' processes and cgroups, mounts, interfaces, iptables chains, sysctls, files. Safe to
    run on nothing, or on what a crash left."""
    done: list[str] = []
    state = read_state(workdir) or {}
    processes = {p["name"]: p for p in state.get("processes", [])}

    def terminate(names: tuple[str, ...]) -> None:
        procs = [processes[n] for n in names if processes.get(n, {}).get("pid")]
        pids = [(p["pid"], p["binary"]) for p in procs]
        stopped = terminate_pids(pids, timeout=20, reap_wait=0)
        done.extend(p["name"] for p in procs if p["pid"] in stopped)

    for stage in _STOP_STAGES:
        terminate(stage)
    # the pods' processes, while their containerd still runs; then containerd and its shims
    if pods := kill_cgroup_tree():
        done.append(f"{pods} pod process(es)")
    terminate(_CONTAINERD)
    if _kill_referencing(str(workdir)):
        done.append("leftover processes")
    kill_cgroup_tree()
    _unmount_under(workdir)
    for interface in (NODE_INTERFACE, CNI_BRIDGE):
        if _run("ip", "link", "show", interface, check=False).returncode == 0:
            _run("ip", "link", "delete", interface, check=False)
            done.append(f"interface {interface}")
    if removed := remove_chains():
        done.append(f"{len(removed)} iptables chain(s)")
    for name, value in (state.get("sysctls") or {}).items():
        with contextlib.suppress(OSError):
            _write_sysctl(name, value)
    logs = Path("/var/log/containers")
    if logs.is_dir():
        for link in logs.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and str(workdir) in os.readlink(link):
                    link.unlink()
        with contextlib.suppress(OSError):
            logs.rmdir()  # made by the kubelet; left if something else uses it
    # libcni's cache of our pods' results (a CNI DEL would have removed them)
    for cached in Path("/var/lib/cni/results").glob(f"{CNI_NETWORK}-*"):
        cached.unlink(missing_ok=True)
    shutil.rmtree(HOSTPATH_PV_DIR, ignore_errors=True)
    _keep_logs(workdir)
    if workdir.exists():
        shutil.rmtree(workdir, ignore_errors=True)
        done.append(f"removed {workdir}")
    return done


# -- the node ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningNode:
    """What a test needs of a node that is up, whoever started it."""

    kubeconfig: Path
    kubectl: Path
    image: str  # our image, in the node's containerd: pods use imagePullPolicy: Never
    name: str = NODE_NAME
    ip: str = NODE_IP
    workdir: Path = NODE_DIR
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def kube(self) -> KubeTarget:
        return KubeTarget(self.kubeconfig, self.kubectl, "node")

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunningNode:
        return cls(
            kubeconfig=Path(state["kubeconfig"]),
            kubectl=Path(state["kubectl"]),
            image=state["image"],
            name=state["node"],
            ip=state["node_ip"],
            workdir=Path(state["workdir"]),
            facts=state.get("facts") or {},
        )


class NodeCluster:
    """A control plane and one Ready node. :meth:`start`, then :attr:`kubeconfig`,
    :attr:`image` (our image, loaded into the node) and :attr:`facts` (timings, sizes)."""

    def __init__(
        self,
        workdir: Path = NODE_DIR,
        binaries: Binaries | None = None,
        node_binaries: NodeBinaries | None = None,
    ) -> None:
        self.workdir = workdir
        self._binaries = binaries
        self._node_binaries = node_binaries
        self.plane: LocalControlPlane | None = None
        self.processes: list[ManagedProcess] = []
        self.images: dict[str, ImageArchive] = {}
        self.facts: dict[str, Any] = {}
        self._sysctls: dict[str, str] = {}
        self._detached = False

    @property
    def kubeconfig(self) -> Path:
        assert self.plane is not None, "not started"
        return self.plane.kubeconfig

    @property
    def kubectl(self) -> Path:
        assert self._binaries is not None, "not started"
        return self._binaries.kubectl

    @property
    def image(self) -> str:
        return self.images["memoria-operator"].ref

    def running(self) -> RunningNode:
        return RunningNode(
            self.kubeconfig, self.kubectl, self.image, workdir=self.workdir, facts=self.facts
        )

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd.sock"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 180.0, *, detached: bool = False) -> None:
        missing = missing_prerequisites()
        if missing:
            raise NodeUnavailable(
                "this machine cannot run the node; missing: "
                + ", ".join(missing)
                + " (hack/bootstrap.sh installs the packages)"
            )
        self._detached = detached
        started = time.monotonic()
        with _machine_lock():
            self._take_over()
            try:
                self._start(timeout)
            except BaseException:
                _log(f"start failed: tearing down what was made; logs kept in {LAST_LOGS}")
                self.stop()
                raise
        self.facts["up_seconds"] = round(time.monotonic() - started, 1)
        self._write_state()

    def _take_over(self) -> None:
        """Refuse a live node owned by someone else; clean up a dead one's leftovers."""
        state = read_state(self.workdir)
        if state:
            owner = state.get("owner")
            if state.get("detached") and _apiserver_alive(state):
                raise NodeBusy(
                    f"a node is up (python -m testbed up --node, kubeconfig "
                    f"{state.get('kubeconfig')}); 'python -m testbed down' stops it"
                )
            if not state.get("detached") and owner and owner != os.getpid() and _pid_alive(owner):
                raise NodeBusy(f"the node is in use by process {owner} (a test session?)")
        if state or self.workdir.exists() or Path("/sys/class/net", NODE_INTERFACE).exists():
            _log(f"cleaning up an earlier run: {', '.join(teardown(self.workdir)) or 'nothing'}")

    def _timed(self, key: str, since: float) -> None:
        self.facts[key] = round(time.monotonic() - since, 1)

    def _start(self, timeout: float) -> None:
        t = time.monotonic()
        self._binaries = self._binaries or ensure_binaries(("etcd", "kubernetes"))
        self._node_binaries = self._node_binaries or ensure_node_binaries()
        self._timed("binaries_seconds", t)
        t = time.monotonic()
        self.images = {"pause": pause_image(k8s_version()), "memoria-operator": project_image()}
        self._timed("images_seconds", t)
        self.facts["image"] = self.images["memoria-operator"].facts

        self.workdir.mkdir(parents=True)
        for sub in ("cni/net.d", "cni/ipam", "kubelet", "pod-logs", "containerd"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.plane = LocalControlPlane(
            self._binaries, workdir=self.workdir / "control-plane", node_ip=NODE_IP
        )
        self.kubelet_port = free_port("0.0.0.0")  # noqa: S104 - only to find a free port
        self._write_state()  # from here on, a crash leaves a state file to clean up from

        t = time.monotonic()
        self._host_network()
        self._prepare_images()
        self._start_containerd()
        self._timed("containerd_seconds", t)

        t = time.monotonic()
        self.plane.start(timeout=timeout, detached=self._detached)
        self._write_state()
        self._timed("control_plane_seconds", t)

        t = time.monotonic()
        self._spawn(
            "hostpath-permissions",
            [sys.executable, "-m", _HOSTPATH_MODULE, str(HOSTPATH_PV_DIR)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self._start_node_processes()
        self._write_state()
        self._wait_node_ready(timeout)
        self._timed("node_ready_seconds", t)
        self._storage_class()

    def _host_network(self) -> None:
        for name in SYSCTLS:
            self._sysctls[name] = _read_sysctl(name)
        self._write_state()
        # a dummy interface where the kernel has the module; else a bridge without ports, which
        # holds a local address just as well (this machine's kernel has no dummy driver)
        if _run("ip", "link", "add", NODE_INTERFACE, "type", "dummy", check=False).returncode:
            _run("ip", "link", "add", NODE_INTERFACE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_INTERFACE)
        _run("ip", "link", "set", NODE_INTERFACE, "up")
        # Service traffic between pods on one bridge must pass kube-proxy's iptables rules; the
        # bridge plugin turns on IP forwarding itself (pods reach ClusterIPs through the host)
        _write_sysctl("net/bridge/bridge-nf-call-iptables", "1")
        assert self.plane is not None
        _guard_rules(self.plane.api_port, self.kubelet_port)
        _make_cgroup_root()

    def _containerd(self, name: str, config_text: str) -> ManagedProcess:
        config = self.workdir / f"{name}.toml"
        config.write_text(config_text)
        containerd = ManagedProcess(
            name,
            [shutil.which("containerd") or "containerd", "--config", str(config)],
            self.workdir / f"{name}.log",
        )
        self.processes.append(containerd)
        containerd.start(detached=self._detached and name == "containerd")
        self._write_state()

        def up() -> bool:
            if not containerd.running:
                raise RuntimeError(f"{name} exited\n{containerd.log_tail()}")
            return self._ctr("version", check=False).returncode == 0

        wait_until(up, 30, f"{name} on {self.containerd_socket}", 0.1)
        return containerd

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", self.containerd_socket, "--namespace", "k8s.io", *args,
                    check=check)  # fmt: skip

    def _prepare_images(self) -> None:
        """With containerd's CRI off (the kubelet must never see this), make the kept image
        store hold exactly our images: containers an earlier run left are deleted, missing or
        incomplete images imported, older builds of ours removed. A store that containerd
        cannot open is wiped and rebuilt."""
        root = containerd_root()
        config = containerd_config(self.workdir, self.images["pause"].ref, root, cri=False)
        for attempt in (1, 2):
            root.mkdir(parents=True, exist_ok=True)
            try:
                self._containerd("containerd-images", config)
                self._sync_images()
                return
            except (RuntimeError, TimeoutError) as exc:
                if attempt == 2:
                    raise
                _log(f"the image store {root} is unusable ({exc}): rebuilding it")
            finally:
                for proc in [p for p in self.processes if p.name == "containerd-images"]:
                    proc.stop()
                    self.processes.remove(proc)
            _unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)

    def _sync_images(self) -> None:
        leftovers = self._ctr("containers", "ls", "-q").stdout.split()
        if leftovers:
            self._ctr("containers", "rm", *leftovers)
        present = {}
        for line in self._ctr("images", "check").stdout.splitlines()[1:]:
            fields = line.split()
            # REF TYPE DIGEST STATUS SIZE UNPACKED: usable once complete and unpacked
            present[fields[0]] = "complete" in line and fields[-1] == "true"
        wanted = {a.ref: a for a in self.images.values()}
        t = time.monotonic()
        missing = [a for ref, a in wanted.items() if not present.get(ref)]
        import_into_containerd(self.containerd_socket, missing)
        self.facts["imported"] = [a.ref for a in missing]
        self._timed("import_seconds", t)
        # older builds of ours go, and so do the sha256:<id> names CRI gave them (those hold
        # their content too); the names CRI gave the images we keep stay
        digests = {}
        for line in self._ctr("images", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            digests[fields[0]] = fields[2]
        keep = {digests.get(ref) for ref in wanted}
        stale = [
            ref
            for ref, digest in digests.items()
            if ref.startswith((LOCAL + "/", "sha256:")) and ref not in wanted and digest not in keep
        ]
        if stale:
            self._ctr("images", "rm", "--sync", *stale)

    def _start_containerd(self) -> None:
        (self.workdir / "cni" / "net.d" / "10-memoria.conflist").write_text(
            json.dumps(cni_config(self.workdir), indent=2)
        )
        self._containerd(
            "containerd",
            containerd_config(self.workdir, self.images["pause"].ref, containerd_root()),
        )

    def _start_node_processes(self) -> None:
        assert self.plane is not None
        assert self._node_binaries is not None
        plane, nb = self.plane, self._node_binaries
        pki = plane.workdir / "pki"
        plane.ca.serving([NODE_IP, NODE_NAME, HOST]).write(pki, "kubelet")

        scheduler_config = plane.kubeconfig_for_user("system:kube-scheduler")
        self._spawn(
            "kube-scheduler",
            [
                str(nb.kube_scheduler),
                f"--kubeconfig={scheduler_config}",
                f"--authentication-kubeconfig={scheduler_config}",
                f"--authorization-kubeconfig={scheduler_config}",
                "--authentication-skip-lookup=true",
                "--leader-elect=false",
                f"--bind-address={HOST}",
                f"--secure-port={free_port(HOST)}",
                "--v=0",
            ],
        )

        kubelet_kubeconfig = plane.kubeconfig_for_user(
            f"system:node:{NODE_NAME}", ("system:nodes",)
        )
        kubelet_yaml = self.workdir / "kubelet.yaml"
        kubelet_yaml.write_text(
            yaml.safe_dump(kubelet_config(self.workdir, pki, self.kubelet_port, free_port(HOST)))
        )
        self._spawn(
            "kubelet",
            [
                str(nb.kubelet),
                f"--config={kubelet_yaml}",
                f"--kubeconfig={kubelet_kubeconfig}",
                f"--root-dir={self.workdir / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

        proxy_kubeconfig = plane.kubeconfig_for_user("system:kube-proxy")
        proxy_yaml = self.workdir / "kube-proxy.yaml"
        proxy_yaml.write_text(
            yaml.safe_dump(kube_proxy_config(proxy_kubeconfig, free_port(HOST), free_port(HOST)))
        )
        self._spawn("kube-proxy", [str(nb.kube_proxy), f"--config={proxy_yaml}", "--v=0"])

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.workdir / f"{name}.log", env=env)
        self.processes.append(proc)
        proc.start(detached=self._detached)
        return proc

    def kubectl_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.kubectl), *args],
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            timeout=60,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def _tails(self) -> str:
        procs = list(self.processes) + (list(self.plane.processes) if self.plane else [])
        return "\n".join(p.log_tail(15) for p in procs)

    def _wait_node_ready(self, timeout: float) -> None:
        def ready() -> bool:
            for p in self.processes:
                if not p.running:
                    raise RuntimeError(f"{p.name} exited during start-up\n{p.log_tail()}")
            out = self.kubectl_run("get", "node", NODE_NAME, "-o", "json", check=False)
            if out.returncode != 0:
                return False
            node = json.loads(out.stdout)
            conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            taints = [t["key"] for t in node["spec"].get("taints", [])]
            return conditions.get("Ready") == "True" and not taints

        wait_until(ready, timeout, f"node {NODE_NAME} Ready and untainted", 0.5, self._tails)

    def _storage_class(self) -> None:
        storage_class = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "kubernetes.io/host-path",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        proc = subprocess.run(
            [str(self.kubectl), "apply", "-f", "-"],
            input=yaml.safe_dump(storage_class),
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"StorageClass {STORAGE_CLASS}: {proc.stderr.strip()}")

    def _write_state(self) -> None:
        if not self.workdir.exists():
            return
        plane_procs = self.plane.processes if self.plane else []
        state = {
            "owner": os.getpid(),
            "detached": self._detached,
            "kubeconfig": str(self.plane.kubeconfig) if self.plane else None,
            "kubectl": str(self._binaries.kubectl) if self._binaries else None,
            "server": self.plane.server if self.plane else None,
            "node": NODE_NAME,
            "node_ip": NODE_IP,
            "image": self.images["memoria-operator"].ref if self.images else None,
            "workdir": str(self.workdir),
            "sysctls": self._sysctls,
            "facts": self.facts,
            "processes": [
                # "binary" is what the process's command line must hold to be ours (pid reuse)
                {"name": p.name, "pid": p.pid, "binary": p.argv[2 if p.argv[1:2] == ["-m"] else 0]}
                for p in [*self.processes, *plane_procs]
            ],
        }
        tmp = self.workdir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.workdir / "state.json")

    def stop(self) -> list[str]:
        """Stop everything and undo every change to the machine."""
        for proc in list(self.processes):
            if proc.name in ("kubelet", "kube-proxy", "kube-scheduler", "hostpath-permissions"):
                proc.stop()
        if self.plane is not None:
            for proc in reversed(self.plane.processes):
                proc.stop()
        done = teardown(self.workdir)
        for proc in self.processes:
            proc.stop(timeout=5)
        self.processes.clear()
        return done

    def __enter__(self) -> NodeCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _apiserver_alive(state: dict[str, Any]) -> bool:
    for proc in state.get("processes", []):
        if proc["name"] == "kube-apiserver" and proc.get("pid"):
            try:
                cmdline = Path(f"/proc/{proc['pid']}/cmdline").read_bytes()
            except OSError:
                return False
            return proc["binary"].encode() in cmdline
    return False


def node_is_healthy(state: dict[str, Any]) -> bool:
    """Every process of a (detached) node still runs."""
    for proc in state.get("processes", []):
        try:
            cmdline = Path(f"/proc/{proc['pid']}/cmdline").read_bytes()
        except (OSError, TypeError):
            return False
        if proc["binary"].encode() not in cmdline:
            return False
    return bool(state.get("processes"))


__all__ = [
    "NODE_IP",
    "NODE_NAME",
    "POD_CIDR",
    "SERVICE_CIDR",
    "BinariesUnavailable",
    "NodeBusy",
    "NodeCluster",
    "NodeUnavailable",
    "RunningNode",
    "missing_prerequisites",
    "node_is_healthy",
    "read_state",
    "teardown",
]
