"""A real Prometheus (Debian's ``prometheus`` package) scraping test-bed processes on loopback.

Used by the dashboard test and the script that renders the dashboard's panels for the docs:
a private config and TSDB in a temporary directory, a free loopback port, a 1 s scrape
interval, and the HTTP API's instant and range queries.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .processes import ManagedProcess, free_port, wait_until

SCRAPE_SECONDS = 1


class PrometheusUnavailable(RuntimeError):
    """No ``prometheus`` binary: hack/bootstrap.sh installs Debian's package."""


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusUnavailable(
            "prometheus not found: run hack/bootstrap.sh (Debian package prometheus)"
        )
    return found


class PrometheusServer:
    """``targets``: job name -> list of (``host:port``, extra labels)."""

    def __init__(self, workdir: Path, targets: dict[str, list[tuple[str, dict[str, str]]]]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.targets = targets
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": f"{SCRAPE_SECONDS}s",
                "evaluation_interval": f"{SCRAPE_SECONDS}s",
            },
            "scrape_configs": [
                {
                    "job_name": job,
                    # keep the operator's own namespace/group labels as they are
                    "honor_labels": True,
                    "static_configs": [
                        {"targets": [address], "labels": labels} for address, labels in targets
                    ],
                }
                for job, targets in self.targets.items()
            ],
        }

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        self.proc = ManagedProcess(
            "prometheus",
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
            ],
            self.workdir / "prometheus.log",
        )
        self.proc.start()
        wait_until(self._ready, 30, "prometheus to be ready", detail=self._log_tail)

    def _log_tail(self) -> str:
        return self.proc.log_tail() if self.proc else ""

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def _api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        result: list[dict[str, Any]] = self._api("query", **params)["result"]
        return result

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}"
        )["result"]
        return result

    def target_health(self) -> dict[str, str]:
        """``instance`` -> ``up`` / ``down`` / ``unknown`` as the last scrape found it."""
        active = self._api("targets")["activeTargets"]
        return {t["labels"]["instance"]: t["health"] for t in active}
