"""A Kubernetes API to run e2e tests and the demo against, whichever kind it is.

Three targets, same tests:

* ``local``: the :class:`LocalControlPlane` of this package (what CI runs here);
* ``kubeconfig``: any cluster named by ``MEMORIA_E2E_KUBECONFIG``;
* ``kind``: a kind cluster made by pytest-kind where Docker exists (``MEMORIA_E2E_KIND=1``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memoria.contract import API_VERSION, PLURAL

from .controlplane import LocalControlPlane

# ``kubectl get`` names of the kinds :meth:`KubeTarget.read` fetches itself: the API path's base
# and the resource's plural. The tests poll these (who holds the Lease, a region's status) every
# 0.1 s; a kubectl process per poll cost a tenth of a second of CPU each, on a 2-core machine
# running several test sessions at once.
_READ_PATHS = {
    "mreg": (f"/apis/{API_VERSION}", PLURAL),
    "memoriaregion": (f"/apis/{API_VERSION}", PLURAL),
    "deployment": ("/apis/apps/v1", "deployments"),
    "lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "service": ("/api/v1", "services"),
    "serviceaccount": ("/api/v1", "serviceaccounts"),
    "configmap": ("/api/v1", "configmaps"),
    "secret": ("/api/v1", "secrets"),
    "pod": ("/api/v1", "pods"),
    "role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "rolebinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}
_clients: dict[tuple[str, int], Any] = {}  # (kubeconfig, its mtime) -> kubernetes ApiClient
_clients_lock = threading.Lock()


def _api_client(kubeconfig: Path) -> Any:
    """One ``kubernetes`` ApiClient (a pool of kept-alive connections) per kubeconfig file, made
    again if the file is rewritten."""
    from memoria.contract import load_api_client

    key = (str(kubeconfig), kubeconfig.stat().st_mtime_ns)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = load_api_client(str(kubeconfig))
        return _clients[key]


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries its stderr."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class KubeApiError(RuntimeError):
    """A GET through the API failed: refused, not found, or no answer."""


@dataclass
class KubeTarget:
    kubeconfig: Path
    kubectl_path: Path
    flavour: str  # local | kubeconfig | kind
    plane: LocalControlPlane | None = None
    created_namespaces: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    @property
    def server(self) -> str:
        """The API server's URL, as the kubeconfig names it."""
        doc = yaml.safe_load(self.kubeconfig.read_text())
        server: str = doc["clusters"][0]["cluster"]["server"]
        return server

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}
        proc = subprocess.run(
            [str(self.kubectl_path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(list(args), proc.returncode, proc.stderr)
        return proc

    def apply(
        self,
        manifest: dict[str, Any] | str,
        namespace: str | None = None,
        check: bool = True,
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        args = ["apply", "-f", "-", *extra]
        if namespace:
            args += ["-n", namespace]
        return self.kubectl(*args, stdin=text, check=check)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def read(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        """``kubectl get KIND NAME -n NAMESPACE -o json``, or None where kubectl would fail (not
        found, refused, no answer). The kinds of ``_READ_PATHS`` are read through the
        ``kubernetes`` client on kept-alive connections, with the same kubeconfig; others
        through kubectl."""
        if kind not in _READ_PATHS:
            proc = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
            return json.loads(proc.stdout) if proc.returncode == 0 else None
        base, plural = _READ_PATHS[kind]
        try:
            return self.api_get(f"{base}/namespaces/{namespace}/{plural}/{name}")
        except KubeApiError:
            return None

    def api_get(self, path: str, **query: str) -> dict[str, Any]:
        """GET ``path`` of the API through the ``kubernetes`` client (kept-alive connections,
        the same kubeconfig as kubectl): the JSON answer, else :class:`KubeApiError`."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        from memoria.contract import api_call

        try:
            resp = api_call(
                _api_client(self.kubeconfig), "GET", path, query=query or None, timeout=60
            )
        except (ApiException, HTTPError, OSError) as exc:
            raise KubeApiError(f"GET {path}: {exc}") from exc
        if resp.status != 200:
            raise KubeApiError(f"GET {path}: HTTP {resp.status}")
        found: dict[str, Any] = json.loads(resp.data)
        return found

    def token_kubeconfig(
        self,
        service_account: str,
        namespace: str,
        path: Path,
        *,
        duration: str = "1h",
        server: str | None = None,
    ) -> Path:
        """Write to ``path`` a kubeconfig that authenticates with a token of the ServiceAccount
        alone (no admin certificate), so RBAC judges exactly what that identity may do;
        ``server`` replaces the API server's URL (say a proxy's)."""
        token = self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        doc = yaml.safe_load(self.kubeconfig.read_text())
        doc["users"][0]["user"] = {"token": token}
        if server is not None:
            doc["clusters"][0]["cluster"]["server"] = server
        path.write_text(yaml.safe_dump(doc))
        return path

    def create_namespace(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        self.created_namespaces.append(name)
        return name

    def delete_namespace(self, name: str) -> None:
        self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def kubectl_binary(default: Path | None) -> Path:
    if default is not None and default.exists():
        return default
    found = shutil.which("kubectl")
    if not found:
        raise FileNotFoundError("kubectl not found: run hack/build-k8s-binaries.sh or install it")
    return Path(found)
