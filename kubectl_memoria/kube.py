"""The plugin's own small Kubernetes API client: a kubeconfig's server and credentials, JSON over
HTTPS, one connection per thread.

Not the ``kubernetes`` package: importing it takes two seconds on a busy two-core machine, twice
the plugin's whole budget for ``status``. What a kubeconfig may hold and this supports: a server
with a CA (file or data) or ``insecure-skip-tls-verify``; a client certificate and key (files or
data), a bearer token (inline or ``tokenFile``), or an ``exec`` credential plugin that returns a
token or a client certificate (EKS, GKE, AKS and OIDC helpers do). The older ``auth-provider``
entries are refused with a message saying so.

Errors (one hierarchy, each with the exit code the CLI gives it)::

    KubeError                  4: the API server could not be asked
    +-- ConfigError            4: no usable kubeconfig
    +-- Unreachable            4: no connection (names the server, never a credential)
    +-- ApiError               the server answered an error status
        +-- NotFound           3: 404
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import time
import urllib.parse
from base64 import b64decode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class KubeError(Exception):
    """The API server could not be asked, or refused."""

    exit_code = 4


class ConfigError(KubeError):
    """No usable kubeconfig: the message says which field or file is the problem."""


class Unreachable(KubeError):
    """No connection to the API server."""


class ApiError(KubeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class NotFound(ApiError):
    exit_code = 3


def _kubeconfig_files(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def _named(items: list[dict[str, Any]] | None, name: str, what: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            found: dict[str, Any] = item.get(what) or {}
            return found
    raise ConfigError(f"kubeconfig has no {what} named {name!r}")


def _exec_credential(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a kubeconfig ``exec`` credential plugin; its ``status`` (token or certificate)."""
    import subprocess  # imported on use, like tempfile below: most kubeconfigs need neither

    env = {**os.environ, **{e["name"]: e["value"] for e in spec.get("env") or []}}
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {
            "apiVersion": spec.get("apiVersion"),
            "kind": "ExecCredential",
            "spec": {"interactive": False},
        }
    )
    try:
        proc = subprocess.run(
            [spec["command"], *(spec.get("args") or [])],
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"exec credential plugin {spec['command']!r} failed: {exc}") from exc
    if proc.returncode != 0:
        # its stderr may say what to do (log in again); its stdout might hold a credential
        raise ConfigError(
            f"exec credential plugin {spec['command']!r} exited {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace').strip()[:300]}"
        )
    status: dict[str, Any] = json.loads(proc.stdout).get("status") or {}
    return status


@dataclass
class Cluster:
    """One API server and the credentials to talk to it."""

    server: str
    namespace: str
    context: ssl.SSLContext | None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, context: str | None = None) -> Cluster:
        doc: dict[str, Any] = {}
        for path in _kubeconfig_files(kubeconfig):
            try:
                # the C loader when PyYAML has it: kubeconfigs can be large
                part = yaml.load(path.read_text(), Loader=_LOADER) or {}  # noqa: S506
            except OSError as exc:
                if kubeconfig:
                    raise ConfigError(f"cannot read kubeconfig {path}: {exc.strerror}") from exc
                continue
            for key in ("clusters", "users", "contexts"):
                doc.setdefault(key, []).extend(part.get(key) or [])
            doc.setdefault("current-context", part.get("current-context"))
        name = context or doc.get("current-context")
        if not name:
            raise ConfigError("no kubeconfig context: set KUBECONFIG or pass --kubeconfig")
        ctx = _named(doc.get("contexts"), name, "context")
        cluster = _named(doc.get("clusters"), ctx.get("cluster", ""), "cluster")
        user = _named(doc.get("users"), ctx.get("user", ""), "user") if ctx.get("user") else {}
        base = Path(_kubeconfig_files(kubeconfig)[0]).parent
        return cls._build(cluster, user, ctx.get("namespace") or "default", base)

    @classmethod
    def _build(
        cls, cluster: dict[str, Any], user: dict[str, Any], namespace: str, base: Path
    ) -> Cluster:
        server = str(cluster.get("server") or "")
        if not server.startswith(("https://", "http://")):
            raise ConfigError("kubeconfig cluster has no https:// server")
        if "auth-provider" in user:
            raise ConfigError(
                "kubeconfig user uses an auth-provider, which this plugin does not support; "
                "use an exec credential plugin or a token"
            )
        if "exec" in user:
            status = _exec_credential(user["exec"])
            user = {
                "token": status.get("token"),
                "client-certificate-data": _b64(status.get("clientCertificateData")),
                "client-key-data": _b64(status.get("clientKeyData")),
            }
        context = None
        if server.startswith("https://"):
            context = ssl.create_default_context()
            if cluster.get("insecure-skip-tls-verify"):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif cluster.get("certificate-authority-data"):
                context.load_verify_locations(
                    cadata=b64decode(cluster["certificate-authority-data"]).decode()
                )
            elif cluster.get("certificate-authority"):
                context.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
            cert = _material(user, "client-certificate", base)
            key = _material(user, "client-key", base)
            if cert and key:
                _load_chain(context, cert, key)
        headers = {"Accept": "application/json", "User-Agent": "kubectl-memoria"}
        token = user.get("token")
        if not token and user.get("tokenFile"):
            token = (base / user["tokenFile"]).read_text().strip()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return cls(server=server.rstrip("/"), namespace=namespace, context=context, headers=headers)

    # -- requests --------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            url = urllib.parse.urlsplit(self.server)
            if url.scheme == "https":
                conn = http.client.HTTPSConnection(
                    url.hostname or "", url.port or 443, timeout=self.timeout, context=self.context
                )
            else:
                conn = http.client.HTTPConnection(
                    url.hostname or "", url.port or 80, timeout=self.timeout
                )
            self._local.conn = conn
        return conn

    def raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        throttled: int = 0,
    ) -> tuple[int, bytes]:
        """(status, body) of one request; raises :class:`Unreachable` only."""
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        payload = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status == 429 and throttled < 5:
                    # busy or (re)initializing: wait as it asks, as kubectl does
                    throttled += 1
                    time.sleep(min(float(resp.getheader("Retry-After") or 1), 2.0))
                    return self.raw(
                        method, path, body, content_type=content_type, throttled=throttled
                    )
                return resp.status, data
            except (OSError, http.client.HTTPException) as exc:
                # a kept-alive connection the server closed: open a new one once
                conn.close()
                self._local.conn = None
                if attempt == 2 or isinstance(exc, ssl.SSLCertVerificationError):
                    raise Unreachable(f"cannot reach the API server {self.server}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """The JSON answer of a request that must succeed."""
        status, data = self.raw(method, path, body, **kw)
        if status >= 400:
            try:
                message = str(json.loads(data).get("message") or "")
            except ValueError:
                message = data.decode(errors="replace")[:200]
            raise (NotFound if status == 404 else ApiError)(status, message)
        return json.loads(data) if data else None

    def get(self, path: str, **query: str) -> Any:
        return self.request("GET", path, query=query or None)

    def merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")


def _b64(value: str | None) -> str | None:
    from base64 import b64encode

    return b64encode(value.encode()).decode() if value else None


def _material(user: dict[str, Any], key: str, base: Path) -> bytes | None:
    if user.get(f"{key}-data"):
        return b64decode(str(user[f"{key}-data"]))
    if user.get(key):
        return (base / str(user[key])).read_bytes()
    return None


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """``load_cert_chain`` reads files only: write both to a private directory, load, remove."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kubectl-memoria-") as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(str(cert_path), str(key_path))
