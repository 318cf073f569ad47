"""The operator's own leader election: a Lease so that of several replicas exactly one acts.

Chosen over kopf's peering because it fences: a replica acts only after it holds the Lease and
exits the moment it cannot renew it, the controller-runtime way; peering only pauses operators
eventually and needs cluster-wide CRDs of its own. The standby replicas block before kopf starts,
so they make no API calls beyond reading the Lease.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from .config import OperatorConfig
from .kube import Conflict, Kube, path_for
from .leadership import micro_time, parse_time

log = logging.getLogger("memoria_operator.election")


class OperatorElection:
    def __init__(
        self, kube: Kube, config: OperatorConfig, on_lost: Callable[[], None] | None = None
    ) -> None:
        self.kube = kube
        self.config = config
        self.identity = f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.path = path_for(
            "coordination.k8s.io/v1", "Lease", config.election_namespace, config.election_lease_name
        )
        self.on_lost = on_lost or (lambda: os._exit(3))
        self._stop = threading.Event()
        self._renewed = 0.0

    def _try(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        lease = self.kube.get(self.path)
        duration = math.ceil(self.config.lease_duration_seconds)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.config.election_lease_name,
                    "namespace": self.config.election_namespace,
                },
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": duration,
                    "acquireTime": micro_time(now),
                    "renewTime": micro_time(now),
                    "leaseTransitions": 0,
                },
            }
            self.kube.create(self.path.rsplit("/", 1)[0], body)
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = parse_time(spec.get("renewTime"))
        held_for = float(spec.get("leaseDurationSeconds") or duration)
        expired = renewed is None or now >= renewed + dt.timedelta(seconds=held_for)
        if holder not in (None, "", self.identity) and not expired:
            return False
        spec = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": duration,
            "renewTime": micro_time(now),
        }
        if holder != self.identity:
            spec["acquireTime"] = micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        self.kube.replace(self.path, {**lease, "spec": spec})
        return True

    def acquire(self) -> None:
        """Block until this replica holds the operator Lease."""
        waiting_logged = False
        while not self._stop.is_set():
            try:
                if self._try():
                    self._renewed = time.monotonic()
                    log.info("operator election: %s holds %s", self.identity, self.path)
                    return
            except Conflict:
                pass
            except Exception as exc:  # keep trying: the API may be starting
                log.warning("operator election: %s", exc)
            if not waiting_logged:
                log.info("operator election: another replica leads; standing by")
                waiting_logged = True
            self._stop.wait(self.config.retry_interval_seconds)

    def keep_renewing(self) -> threading.Thread:
        thread = threading.Thread(target=self._renew_loop, name="operator-election", daemon=True)
        thread.start()
        return thread

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.config.renew_interval_seconds):
            try:
                if self._try():
                    self._renewed = time.monotonic()
                    continue
                log.error("operator election: the Lease was taken by another replica")
            except Exception as exc:
                if time.monotonic() - self._renewed < self.config.lease_duration_seconds:
                    log.warning("operator election: renew failed (%s); retrying", exc)
                    continue
                log.error("operator election: could not renew for a whole lease: %s", exc)
            self.on_lost()
            return

    def stop(self) -> None:
        self._stop.set()
