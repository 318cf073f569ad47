"""The region's view of its scheduler Lease, and its promotion request.

The operator holds the Lease ``memoria-scheduler-<group>`` for the leading region and renews it
while that region is healthy. A region's pods only read it (read-only RBAC): this module watches
it and reports "this region leads" while the holder is this region and the Lease has not expired
by the local clock. If the API server becomes unreachable no renewal is seen, so the region stops
leading when the Lease it last saw expires: a partitioned leader steps down by itself, and the
fence in the store covers the moments in between.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .contract import (
    PROMOTION_REQUEST_KEY,
    api_call,
    load_api_client,
    promotion_request_name,
)
from .errors import LeadershipError, NotConfigured
from .ports import Leadership, LeadershipSource
from .settings import LeadershipSettings
from .sync.base import Backoff
from .sync.trust import LeaseFacts

log = logging.getLogger("memoria.leadership")

# Each watch lasts this long on the server, and a read that sees no byte for 5 s more is
# abandoned: a connection that stalls silently (a real partition drops packets, it does not
# close sockets) is noticed within about 15 s, and the Lease re-read.
_WATCH_WINDOW = 10


def load_kube_config(kubeconfig: str | None) -> Any:
    """An ApiClient: in-cluster credentials inside a pod, otherwise the given kubeconfig,
    $KUBECONFIG or ~/.kube/config."""
    from kubernetes import config

    try:
        return load_api_client(kubeconfig)
    except (config.ConfigException, FileNotFoundError, OSError) as exc:
        raise NotConfigured(f"no Kubernetes credentials: {exc}") from None


@dataclass(frozen=True)
class LeaseView:
    holder: str | None
    transitions: int
    valid_until: float  # time.monotonic() after which the Lease is expired for us

    def held_by(self, identity: str) -> bool:
        return self.holder == identity and time.monotonic() < self.valid_until


def lease_view(lease: Any, now_wall: dt.datetime | None = None) -> LeaseView:
    spec = lease.spec
    holder = spec.holder_identity or None
    duration = float(spec.lease_duration_seconds or 0)
    renew = spec.renew_time or spec.acquire_time
    now_wall = now_wall or dt.datetime.now(dt.UTC)
    if renew is None or not holder:
        remaining = 0.0
    else:
        if renew.tzinfo is None:
            renew = renew.replace(tzinfo=dt.UTC)
        # what is left of the Lease by the wall clock, never more than one full duration
        remaining = min(duration, max(0.0, (renew - now_wall).total_seconds() + duration))
    return LeaseView(holder, int(spec.lease_transitions or 0), time.monotonic() + remaining)


class LeaseWatcher:
    """Watches one Lease and calls ``on_change`` whenever "this region leads" flips (or the
    fencing token changes). Runs two daemon threads: the watch, and an expiry check."""

    def __init__(
        self, settings: LeadershipSettings, on_change: Callable[[Leadership], None]
    ) -> None:
        if not settings.lease_name or not settings.identity:
            raise NotConfigured("a Lease needs MEMORIA_LEADERSHIP__LEASE_NAME and __IDENTITY")
        self.settings = settings
        self.name = settings.lease_name
        self.namespace = settings.lease_namespace
        self.identity = settings.identity
        self.on_change = on_change
        self.view = LeaseView(None, 0, 0.0)
        self.connected = False
        self.disconnected_at: float | None = time.monotonic()  # None while connected
        self.last_error: str | None = None
        self._reported: tuple[bool, int] | None = None
        self._seen = False  # whether the Lease (or its absence) was ever read
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._threads: list[threading.Thread] = []
        self._watch: Any = None

    def start(self) -> None:
        loops = ((self._watch_loop, "lease-watch"), (self._expiry_loop, "lease-expiry"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        for thread in self._threads:
            thread.join(5)

    def _update(self, view: LeaseView) -> None:
        with self._lock:
            self.view = view
            self._seen = True
        self._report()

    def facts(self) -> LeaseFacts:
        """What a peer's decrement is checked against: the Lease's transition count, the
        highest fencing token anyone may hold now (None until the Lease was first read)."""
        with self._lock:
            return LeaseFacts(self.view.transitions if self._seen else None)

    def _report(self) -> None:
        # Under the lock, including the callback: the watch and the expiry check report in
        # the order they decide, so the last report is always the current state.
        with self._lock:
            view = self.view
            state = (view.held_by(self.identity), view.transitions)
            if state == self._reported:
                return
            self.on_change(
                Leadership(
                    leading=state[0],
                    token=state[1],
                    holder=view.holder,
                    source=LeadershipSource.LEASE,
                )
            )
            self._reported = state

    def _expiry_loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self._report()
            except Exception:
                log.exception("lease expiry check failed; retrying")

    def _follow(self, api: Any, selector: str, resource_version: str | None) -> None:
        """Apply watch events until the server ends this watch window."""
        from kubernetes import watch

        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        for event in self._watch.stream(
            api.list_namespaced_lease,
            self.namespace,
            field_selector=selector,
            resource_version=resource_version,
            timeout_seconds=_WATCH_WINDOW,
            _request_timeout=(5, _WATCH_WINDOW + 5),
        ):
            if self._stop.is_set():
                return
            if event["type"] == "DELETED":
                self._update(LeaseView(None, 0, 0.0))
            elif event["type"] in ("ADDED", "MODIFIED"):
                self._update(lease_view(event["object"]))

    def _watch_loop(self) -> None:
        from kubernetes import client

        backoff = Backoff(0.2, 5.0)
        outage = False
        api: Any = None
        while not self._stop.is_set():
            try:
                if api is None:  # reused across watch windows; rebuilt after any failure
                    api = client.CoordinationV1Api(load_kube_config(self.settings.kubeconfig))
                selector = f"metadata.name={self.name}"
                listing = api.list_namespaced_lease(
                    self.namespace, field_selector=selector, _request_timeout=(5, 10)
                )
                for lease in listing.items:
                    self._update(lease_view(lease))
                if not listing.items:
                    self._update(LeaseView(None, 0, 0.0))
                self.connected, self.last_error = True, None
                self.disconnected_at = None
                if outage:
                    log.info("lease watch: reconnected to the API server")
                    outage = False
                self._follow(
                    api, selector, listing.metadata.resource_version if listing.metadata else None
                )
                backoff.reset()
            except Exception as exc:
                # whatever broke the list or the watch (ApiException, a dropped connection,
                # urllib3's errors, missing credentials): the watch must survive it and retry
                if api is not None:
                    # fresh credentials and connections next time (rotated tokens, dead pools)
                    with contextlib.suppress(Exception):
                        api.api_client.close()
                    api = None
                self.connected = False
                if self.disconnected_at is None:
                    self.disconnected_at = time.monotonic()
                self.last_error = str(exc).splitlines()[0][:300]
                if self._stop.is_set():
                    return
                if not outage:
                    log.warning(
                        "lease watch: %s; retrying (this region stops leading when the "
                        "Lease it last saw expires)",
                        self.last_error,
                    )
                    outage = True
                self._stop.wait(backoff.next())

    def status(self) -> dict[str, Any]:
        view = self.view
        return {
            "lease": f"{self.namespace}/{self.name}",
            "identity": self.identity,
            "holder": view.holder,
            "transitions": view.transitions,
            "held": view.held_by(self.identity),
            "seconds_left": round(max(0.0, view.valid_until - time.monotonic()), 3),
            "watch_connected": self.connected,
            "seconds_disconnected": (
                0.0
                if self.disconnected_at is None
                else round(time.monotonic() - self.disconnected_at, 1)
            ),
            "last_error": self.last_error,
        }


def request_promotion(settings: LeadershipSettings) -> str:
    """Ask the operator to make this region lead; the operator performs the switchover.

    Writes the region's promotion-request ConfigMap (the only thing its Role lets it write);
    the operator turns each new value into the promote annotation. Returns the value. Raises
    NotConfigured (no identity or credentials) or LeadershipError (the API server refused).
    """
    if not settings.identity:
        raise NotConfigured(
            "this region does not know its MemoriaRegion: set MEMORIA_LEADERSHIP__IDENTITY "
            "to <namespace>/<name> (the operator does this for the pods it runs)"
        )
    from kubernetes.client.exceptions import ApiException

    namespace, name = settings.identity.split("/")[-2:]  # a cluster prefix names no object
    api_client = load_kube_config(settings.kubeconfig)
    # seconds since the epoch, like `date +%s` in the documented kubectl command: the operator
    # treats the numerically largest pending request as the newest
    value = f"{time.time():.6f}"
    configmap = promotion_request_name(name)
    try:
        resp = api_call(
            api_client,
            "PATCH",
            f"/api/v1/namespaces/{namespace}/configmaps/{configmap}",
            body={"data": {PROMOTION_REQUEST_KEY: value}},
            content_type="application/merge-patch+json",
        )
        if not 200 <= resp.status <= 299:
            raise ApiException(http_resp=resp)
    except ApiException as exc:
        reason = {
            403: "forbidden (check the region's RBAC)",
            404: f"ConfigMap {configmap} not found (is the operator running?)",
        }.get(exc.status, exc.reason or "error")
        raise LeadershipError(
            f"could not request promotion of {settings.identity}: {exc.status} {reason}"
        ) from None
    except Exception as exc:  # urllib3's MaxRetryError and friends: the API is unreachable
        raise LeadershipError(
            f"Kubernetes API unreachable: {str(exc).splitlines()[0][:200]}"
        ) from None
    return value
