"""A Kubernetes API to run e2e tests and the demo against, whichever kind it is.

Three targets, same tests:

* ``local``: the :class:`LocalControlPlane` of this package (what CI runs here);
* ``kubeconfig``: any cluster named by ``MEMORIA_E2E_KUBECONFIG``;
* ``kind``: a kind cluster made by pytest-kind where Docker exists (``MEMORIA_E2E_KIND=1``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .controlplane import LocalControlPlane


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries its stderr."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


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
        import json

        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

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
