"""Pods for real: our image on the test bed's node (kubelet, containerd, CNI, kube-proxy).

Nothing here writes a status: the kubelet runs the containers and probes them, kube-proxy routes
the Service, the hostPath provisioner binds the claim.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.kube import KubeTarget
from testbed.node import RunningNode

pytestmark = [pytest.mark.e2e, pytest.mark.node]

# what the chart and the operator ask of every pod: enforced by the kubelet and the runtime
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.fixture(scope="module")
def kube(node_cluster: RunningNode) -> KubeTarget:
    return node_cluster.kube


@pytest.fixture(scope="module")
def ns(kube: KubeTarget) -> Iterator[str]:
    name = kube.create_namespace("node")
    # the namespace's default ServiceAccount comes from the serviceaccount controller
    deadline = time.monotonic() + 30
    while kube.kubectl("get", "sa", "default", "-n", name, check=False).returncode:
        assert time.monotonic() < deadline, "no default ServiceAccount: controller missing?"
        time.sleep(0.2)
    yield name
    kube.delete_namespace(name)


def _wait(kube: KubeTarget, ns: str, what: str, condition: str, timeout: int = 120) -> None:
    proc = kube.kubectl(
        "wait", "-n", ns, what, f"--for={condition}", f"--timeout={timeout}s",
        check=False, timeout=timeout + 10,
    )  # fmt: skip
    if proc.returncode != 0:
        described = kube.kubectl("describe", "-n", ns, what, check=False).stdout
        events = kube.kubectl("get", "events", "-n", ns, check=False).stdout
        pytest.fail(f"{what} never {condition}: {proc.stderr}\n{described}\n{events}")


def _region_manifests(image: str) -> list[dict[str, Any]]:
    labels = {"app": "region-node-test"}
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "region-data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "region", "labels": labels},
        "spec": {
            "securityContext": POD_SECURITY,
            "automountServiceAccountToken": True,
            "containers": [
                {
                    "name": "memoria",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "args": ["memoria", "serve", "--host", "0.0.0.0", "--port", "8080"],
                    "env": [
                        # the embedded store on the claim, sync in-process (the default)
                        {
                            "name": "MEMORIA_DATABASE__CONNECTION_STRING",
                            "value": "sqlite:////data/memoria.db",
                        },
                        {"name": "MEMORIA_REGION", "value": "node-test"},
                        {"name": "DISABLE_SCHEDULERS", "value": "true"},
                    ],
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "readinessProbe": {
                        "httpGet": {"path": "/healthz", "port": "http"},
                        "periodSeconds": 2,
                    },
                    "livenessProbe": {
                        "httpGet": {"path": "/healthz", "port": "http"},
                        "periodSeconds": 10,
                    },
                    "securityContext": CONTAINER_SECURITY,
                    "resources": {
                        "requests": {"cpu": "50m", "memory": "96Mi"},
                        "limits": {"memory": "384Mi"},
                    },
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "region-data"}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "region"},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    return [pvc, pod, service]


@pytest.fixture(scope="module")
def region_pod(kube: KubeTarget, ns: str, node_cluster: RunningNode) -> str:
    for manifest in _region_manifests(node_cluster.image):
        kube.apply(manifest, ns)
    _wait(kube, ns, "pvc/region-data", "jsonpath={.status.phase}=Bound", 60)
    _wait(kube, ns, "pod/region", "condition=Ready", 180)
    return "region"


def test_the_node_is_ready(kube: KubeTarget, node_cluster: RunningNode) -> None:
    node = kube.get_json("node", node_cluster.name)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True", conditions
    assert not node["spec"].get("taints")
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert info["kubeletVersion"].startswith("v1.")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == node_cluster.ip


def test_a_region_pod_from_our_image_passes_its_readiness_probe(
    kube: KubeTarget, ns: str, region_pod: str, node_cluster: RunningNode
) -> None:
    pod = kube.get_json("pod", region_pod, "-n", ns)
    assert pod["status"]["phase"] == "Running"
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True
    assert status["restartCount"] == 0
    assert status["image"].endswith(node_cluster.image.split("/", 1)[1])
    # the probe is the kubelet's: the pod IP is on the node's pod network
    assert pod["status"]["podIP"].startswith("10.88.")


def test_kubectl_logs_and_exec_reach_the_container(
    kube: KubeTarget, ns: str, region_pod: str
) -> None:
    logs = kube.kubectl("logs", "-n", ns, region_pod).stdout
    assert "Uvicorn running on http://0.0.0.0:8080" in logs or "startup" in logs.lower(), logs
    out = kube.kubectl("exec", "-n", ns, region_pod, "--", "memoria", "--help").stdout
    assert "serve" in out


def test_security_context_is_enforced(kube: KubeTarget, ns: str, region_pod: str) -> None:
    def sh(script: str) -> Any:
        return kube.kubectl("exec", "-n", ns, region_pod, "--", "sh", "-c", script, check=False)

    assert sh("id -u").stdout.strip() == "10001"
    write_root = sh("echo x > /probe")
    assert write_root.returncode != 0
    assert "Read-only file system" in write_root.stderr
    # the writable places are the volumes
    assert sh("echo x > /tmp/probe && echo x > /data/probe").returncode == 0
    status = dict(
        line.split(":", 1) for line in sh("cat /proc/1/status").stdout.splitlines() if ":" in line
    )
    assert status["Seccomp"].strip() == "2", "seccomp RuntimeDefault: filter mode"
    for caps in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[caps].strip(), 16) == 0, f"{caps} = {status[caps]}: ALL not dropped"
    assert status["NoNewPrivs"].strip() == "1"


def test_a_cluster_ip_service_reaches_the_pod_from_the_host(
    kube: KubeTarget, ns: str, region_pod: str
) -> None:
    ip = kube.get_json("service", "region", "-n", ns)["spec"]["clusterIP"]
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no HTTP_PROXY
    deadline = time.monotonic() + 30
    last: object = None
    while time.monotonic() < deadline:
        try:
            with direct.open(f"http://{ip}/healthz", timeout=3) as resp:
                body = json.loads(resp.read())
                assert resp.status == 200
                break
        except OSError as exc:
            last = exc
            time.sleep(0.5)
    else:
        pytest.fail(f"http://{ip}/healthz never answered: {last}")
    assert body


def test_pods_reach_the_api_server_through_the_kubernetes_service(
    kube: KubeTarget, ns: str, region_pod: str
) -> None:
    script = (
        "import json, os, ssl, urllib.request\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "ctx = ssl.create_default_context(cafile=sa + '/ca.crt')\n"
        "host = os.environ['KUBERNETES_SERVICE_HOST']\n"
        "port = os.environ['KUBERNETES_SERVICE_PORT']\n"
        "req = urllib.request.Request(f'https://{host}:{port}/version',\n"
        "    headers={'Authorization': 'Bearer ' + open(sa + '/token').read()})\n"
        "print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))['gitVersion'])\n"
    )
    out = kube.kubectl("exec", "-n", ns, region_pod, "--", "python", "-c", script)
    assert out.stdout.strip().startswith("v1.")


def test_the_operator_entry_point_runs_in_the_image(
    kube: KubeTarget, ns: str, node_cluster: RunningNode
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator-help"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": POD_SECURITY,
            "containers": [
                {
                    "name": "operator",
                    "image": node_cluster.image,
                    "imagePullPolicy": "Never",
                    "args": ["memoria-operator", "--help"],
                    "securityContext": CONTAINER_SECURITY,
                }
            ],
        },
    }
    kube.apply(pod, ns)
    _wait(kube, ns, "pod/operator-help", "jsonpath={.status.phase}=Succeeded", 120)
    out = kube.kubectl("logs", "-n", ns, "operator-help").stdout
    assert "run" in out and "usage" in out.lower(), out
