"""Real ``memoria serve`` processes, as the regions' workloads in tests and the demo."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .processes import ManagedProcess, free_port, wait_until

HOST = "127.0.0.1"


class MemoriaProcess:
    """One region process. ``env`` holds its MEMORIA_* / DECREMENT_TZ settings; the store
    defaults to a SQLite file of its own that survives restarts."""

    def __init__(
        self,
        name: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        workdir: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.port = port or free_port(HOST)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"memoria-{name}-"))
        self.env = {
            "MEMORIA_REGION": name,
            "MEMORIA_DATABASE__CONNECTION_STRING": f"sqlite:///{self.workdir / 'memoria.db'}",
            "MEMORIA_LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.extra_args = extra_args
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "serve.log"

    def start(self, wait: bool = True, timeout: float = 30.0) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MEMORIA_") and k not in ("DECREMENT_TZ", "DISABLE_SCHEDULERS")
        }
        env.update(self.env)
        argv = [
            sys.executable,
            "-m",
            "memoria",
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            *self.extra_args,
        ]
        self.proc = ManagedProcess(f"memoria-{self.name}", argv, self.log_path, env=env)
        self.proc.start()
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        def up() -> bool:
            if self.proc is None or not self.proc.running:
                raise RuntimeError(f"memoria {self.name} exited\n{self.log_tail()}")
            return self.request("GET", "/healthz")[0] in (200, 503)

        wait_until(up, timeout, f"memoria {self.name} on {self.url}", 0.05, self.log_tail)

    def log_tail(self, lines: int = 30) -> str:
        return self.proc.log_tail(lines) if self.proc else "(not started)"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - http to our own loopback server
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            return 0, str(exc)

    def health(self) -> dict[str, Any]:
        status, body = self.request("GET", "/healthz")
        return body if isinstance(body, dict) else {"status": "unreachable", "code": status}

    def write(self, text: str, y: float, **extra: Any) -> str:
        status, body = self.request("POST", "/memories", {"text": text, "y_coord": y, **extra})
        if status != 201:
            raise RuntimeError(f"write to {self.name} failed: {status} {body}")
        return str(body["id"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: graceful shutdown."""
        if self.proc:
            self.proc.stop(timeout=timeout, sig=signal.SIGTERM)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: the region dies."""
        if self.proc:
            self.proc.kill()
            self.proc = None
