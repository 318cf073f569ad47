"""RBAC is enforced by the API server the tests run against."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.kube import KubeTarget

pytestmark = pytest.mark.e2e


def test_unprivileged_identity_is_refused(kube: KubeTarget, namespace: str) -> None:
    if kube.plane is None:
        pytest.skip("minting client certificates needs the local control plane's CA")
    nobody = kube.plane.kubeconfig_for_user("memoria-test-nobody", ("memoria-testers",))
    proc = kube.kubectl("get", "secrets", "-n", namespace, kubeconfig=nobody, check=False)
    assert proc.returncode != 0
    assert "forbidden" in proc.stderr.lower()
    assert "memoria-test-nobody" in proc.stderr
    # grant exactly one verb and see it work, and only it
    kube.kubectl(
        "create", "role", "read-cm", "--verb=get,list", "--resource=configmaps", "-n", namespace
    )
    kube.kubectl(
        "create",
        "rolebinding",
        "read-cm",
        "--role=read-cm",
        "--user=memoria-test-nobody",
        "-n",
        namespace,
    )
    ok = kube.kubectl("get", "configmaps", "-n", namespace, kubeconfig=nobody, check=False)
    assert ok.returncode == 0, ok.stderr
    denied = kube.kubectl(
        "create", "configmap", "x", "-n", namespace, kubeconfig=nobody, check=False
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()


def test_service_account_token_is_refused_without_binding(
    kube: KubeTarget, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    # the token alone, no admin certificate
    cfg = kube.token_kubeconfig("nobody", namespace, tmp_path / "token.kubeconfig")
    proc = kube.kubectl("get", "pods", "-n", namespace, kubeconfig=cfg, check=False)
    assert proc.returncode != 0
    assert f"system:serviceaccount:{namespace}:nobody" in proc.stderr
    assert "forbidden" in proc.stderr.lower()
