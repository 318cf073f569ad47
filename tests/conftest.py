"""Fixtures on real parts: a Kubernetes API, Redis and PostgreSQL servers.

Which Kubernetes API the e2e tests use:

* default: a local control plane (etcd + kube-apiserver + kube-controller-manager) built from the
  Go module proxy and started on loopback; this is what CI runs;
* ``MEMORIA_E2E_KUBECONFIG=/path``: an existing cluster;
* ``MEMORIA_E2E_KIND=1``: a kind cluster through pytest-kind (needs Docker and ``pip install
  .[kind]``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import (
    Binaries,
    LocalControlPlane,
    PostgresServer,
    RedisServer,
    ensure_binaries,
)
from testbed.cluster import install_crd
from testbed.kube import KubeTarget, kubectl_binary
from testbed.paths import CRD


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    return ensure_binaries()


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest, binaries: Binaries) -> Iterator[KubeTarget]:
    given = os.environ.get("MEMORIA_E2E_KUBECONFIG")
    if given:
        yield KubeTarget(Path(given), kubectl_binary(binaries.kubectl), "kubeconfig")
        return
    if os.environ.get("MEMORIA_E2E_KIND") == "1":
        cluster = request.getfixturevalue("kind_cluster")
        yield KubeTarget(Path(cluster.kubeconfig_path), kubectl_binary(binaries.kubectl), "kind")
        return
    plane = LocalControlPlane(binaries)
    plane.start()
    target = KubeTarget(plane.kubeconfig, binaries.kubectl, "local", plane)
    try:
        yield target
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def crd_installed(kube: KubeTarget) -> KubeTarget:
    install_crd(kube, CRD)
    return kube


@pytest.fixture
def namespace(kube: KubeTarget) -> Iterator[str]:
    name = kube.create_namespace()
    yield name
    kube.delete_namespace(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def redis_factory() -> Iterator[list[RedisServer]]:
    """Extra Redis servers for one test (e.g. a replica); all destroyed afterwards."""
    made: list[RedisServer] = []
    yield made
    for server in reversed(made):
        server.destroy()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()
