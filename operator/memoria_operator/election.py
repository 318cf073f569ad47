"""The operator's own leader election: a Lease so that of several replicas exactly one acts.

Chosen over kopf's peering because it fences: a replica acts only after it holds the Lease and
exits the moment it cannot renew it, the controller-runtime way; peering only pauses operators
eventually and needs cluster-wide CRDs of its own. The standby replicas block before kopf starts,
so they make no API calls beyond reading the Lease.

The rules are pure (:func:`election_step`: what to do with the Lease as found;
:func:`election_lease`: the Lease to write) and share their time and spec helpers with the
scheduler Leases (:mod:`.leadership.lease`); :class:`OperatorElection` reads, writes, keeps time.
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
from enum import StrEnum
from typing import Any

from .config import OperatorConfig
from .kube import Conflict, Kube, path_for
from .leadership.lease import (
    API_VERSION,
    empty_lease,
    grant_expired,
    granted_spec,
    renewed_spec,
    spec_of,
)

log = logging.getLogger("memoria_operator.election")


class ElectionStep(StrEnum):
    """What a replica does with the operator Lease as it finds it."""

    CREATE = "create"  # no Lease yet: create it, held by us
    RENEW = "renew"  # we hold it (even if our grant lapsed: nobody took it meanwhile)
    TAKE = "take"  # nobody holds it, or the other holder's grant has expired
    STAND_BY = "stand-by"  # another replica holds a grant that has not expired


def election_step(
    lease: dict[str, Any] | None, *, identity: str, now: dt.datetime, duration: float
) -> ElectionStep:
    """Pure: the step for replica ``identity`` at ``now``; ``duration`` (what this replica
    writes, rounded up as the Lease stores it) stands in for a missing ``leaseDurationSeconds``."""
    if lease is None:
        return ElectionStep.CREATE
    spec = spec_of(lease)
    holder = spec.get("holderIdentity")
    if holder == identity:
        return ElectionStep.RENEW
    if not holder or grant_expired(spec, now, default_duration=math.ceil(duration)):
        return ElectionStep.TAKE
    return ElectionStep.STAND_BY


def election_lease(
    lease: dict[str, Any] | None,
    step: ElectionStep,
    *,
    identity: str,
    namespace: str,
    name: str,
    now: dt.datetime,
    duration: float,
) -> dict[str, Any]:
    """Pure: the operator Lease after ``step`` (anything but stand-by). A created Lease starts
    at transition 0; taking it over counts one more; renewing keeps acquireTime and count."""
    if step is ElectionStep.STAND_BY:
        raise ValueError("a standing-by replica writes no Lease")
    current = lease or empty_lease(namespace, name)
    spec = spec_of(current)
    if step is ElectionStep.RENEW:
        spec = renewed_spec(spec, now=now, duration=duration)
    else:
        spec = granted_spec(spec, holder=identity, now=now, duration=duration)
    if step is ElectionStep.CREATE:
        spec["leaseTransitions"] = 0
    return {**current, "spec": spec}


class OperatorElection:
    def __init__(
        self, kube: Kube, config: OperatorConfig, on_lost: Callable[[], None] | None = None
    ) -> None:
        self.kube = kube
        self.config = config
        self.identity = f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.path = path_for(
            API_VERSION, "Lease", config.election_namespace, config.election_lease_name
        )
        self.on_lost = on_lost or (lambda: os._exit(3))
        self._stop = threading.Event()
        self._renewed = 0.0

    def _try(self) -> bool:
        """One attempt to hold the Lease: True when this replica holds it now."""
        now = dt.datetime.now(dt.UTC)
        lease = self.kube.get(self.path)
        duration = self.config.lease_duration_seconds
        step = election_step(lease, identity=self.identity, now=now, duration=duration)
        if step is ElectionStep.STAND_BY:
            return False
        body = election_lease(
            lease,
            step,
            identity=self.identity,
            namespace=self.config.election_namespace,
            name=self.config.election_lease_name,
            now=now,
            duration=duration,
        )
        if step is ElectionStep.CREATE:
            self.kube.create(self.path.rsplit("/", 1)[0], body)
        else:
            self.kube.replace(self.path, body)
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
            except Exception as exc:  # the API, the network, a timeout: retry until the grant ends
                if time.monotonic() - self._renewed < self.config.lease_duration_seconds:
                    log.warning("operator election: renew failed (%s); retrying", exc)
                    continue
                log.error("operator election: could not renew for a whole lease: %s", exc)
            self.on_lost()
            return

    def stop(self) -> None:
        self._stop.set()
