"""Clock skew for the federation bed's operators: libfaketime moves a Python child's wall clock
by the fraction of a second asked, leaves its monotonic clock alone, and TLS keeps working
within the 5 minutes our certificates are backdated."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.certs import CertificateAuthority
from testbed.federation import faketime_env, libfaketime

try:
    libfaketime()
except FileNotFoundError:
    pytest.skip("libfaketime missing: apt-get install faketime", allow_module_level=True)

CHILD = """
import datetime as dt, json, ssl, socket, sys, time
out = {"wall": time.time(), "mono": time.monotonic(),
       "now": dt.datetime.now(dt.UTC).timestamp(), "local": dt.datetime.now().timestamp()}
if len(sys.argv) > 1:
    ctx = ssl.create_default_context(cafile=sys.argv[1])
    try:
        with socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                out["tls"] = tls.recv(16).decode()
    except ssl.SSLError as exc:
        out["tls"] = f"error: {exc}"
print(json.dumps(out))
"""


def run_child(seconds: float, *args: str) -> tuple[dict[str, float | str], float]:
    """The child's readings and the true wall time at its monotonic reading (checked to lie
    between ours, so the child's monotonic clock is the machine's)."""
    wall, mono = time.time(), time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        env={**os.environ, **faketime_env(seconds)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out: dict[str, float | str] = json.loads(proc.stdout)
    assert mono < float(out["mono"]) < time.monotonic()
    return out, wall + (float(out["mono"]) - mono)


@pytest.mark.parametrize("seconds", [2.75, -1.25, 0.3, -90.5])
def test_the_wall_clock_moves_by_fractions_the_monotonic_clock_does_not(seconds: float) -> None:
    out, true_wall = run_child(seconds)
    for key in ("wall", "now", "local"):
        assert float(out[key]) - true_wall == pytest.approx(seconds, abs=0.02), key


def test_no_skew_means_no_preload() -> None:
    assert faketime_env(0) == {}
    env = faketime_env(-0.5)
    assert env["FAKETIME"] == "-0.500000"
    assert Path(env["LD_PRELOAD"]).exists()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A TLS server on loopback with a serving certificate issued now (valid from 5 minutes
    ago, as the control plane's are); each connection is answered ``hello``."""
    ca = CertificateAuthority()
    cert, key = ca.serving(["127.0.0.1"]).write(tmp_path, "server")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello")
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield tmp_path / "ca.crt", server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


@pytest.mark.parametrize("seconds", [30.5, -90.25])
def test_tls_works_under_a_skew_of_minutes(tls_server: tuple[Path, int], seconds: float) -> None:
    ca, port = tls_server
    out, _ = run_child(seconds, str(ca), str(port))
    assert out["tls"] == "hello"


def test_tls_sees_the_skewed_clock(tls_server: tuple[Path, int]) -> None:
    # 10 minutes behind: the certificate, valid from 5 minutes ago, is not valid yet for the
    # child, so OpenSSL in the child reads the faked clock too
    ca, port = tls_server
    out, _ = run_child(-600, str(ca), str(port))
    assert "certificate is not yet valid" in str(out["tls"])
