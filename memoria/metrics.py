"""Prometheus metrics of one runtime instance (its own registry, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class DropReason(StrEnum):
    """Why a sync event was not published or not applied (``memoria_sync_events_dropped``)."""

    PRIVACY_OUT = "privacy_out"  # outside this region's range: not published
    PRIVACY_IN = "privacy_in"  # outside this region's range: not stored
    OWN_ORIGIN = "own_origin"
    NAMESPACE = "namespace"  # a namespace this region does not exchange (sync.namespaces)
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"
    UNSUPPORTED = "unsupported"  # a valid event this region does not handle (thread.updated)
    STALE = "stale"  # a decrement with an older fencing token
    REJECTED = "rejected"  # the broker refuses its content for good


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.writes = Counter(
            "memoria_writes", "Memory writes accepted, by operation", ["op"], registry=r
        )
        self.published = Counter(
            "memoria_sync_events_published", "Sync events handed to the broker", registry=r
        )
        self.received = Counter(
            "memoria_sync_events_received", "Sync events received from the broker", registry=r
        )
        self.applied = Counter(
            "memoria_sync_events_applied", "Inbound sync events applied to the store", registry=r
        )
        self.dropped = Counter(
            "memoria_sync_events_dropped",
            "Sync events not published or not applied, by reason (privacy_out, privacy_in, "
            "own_origin, namespace, duplicate, malformed, unsupported, stale, rejected; "
            "refused from a peer: oversized, future, version_ahead, foreign_delete, "
            "decrement_not_due, decrement_token)",
            ["reason"],
            registry=r,
        )
        self.lost = Counter(
            "memoria_sync_events_lost",
            "Events the listener knows it could not hand over, by reason: live_overflow (more "
            "than 10,000 journal-less events waited for a failing store; the oldest dropped), "
            "trimmed (the Redis Stream was trimmed past this region's position; counted once "
            "per gap, the events in it are unknown)",
            ["reason"],
            registry=r,
        )
        self.broker_errors = Counter(
            "memoria_sync_publish_failures",
            "Publish attempts that found the broker down",
            registry=r,
        )
        self.refused = Counter(
            "memoria_sync_publish_refused",
            "Publish attempts the broker refused for its setup (the events stay queued in the "
            "outbox until the setting is fixed), by reason (undefined_table, not_a_journal, "
            "insufficient_privilege, read_only, ...)",
            ["reason"],
            registry=r,
        )
        self.decrements = Counter(
            "memoria_decrement_runs",
            "Daily decrement attempts, by result (ran, already, stale, remote_ran)",
            ["result"],
            registry=r,
        )
        self.leader = Gauge(
            "memoria_scheduler_leader",
            "1 while this region may run the daily decrement",
            registry=r,
        )
        self.scheduler_active = Gauge(
            "memoria_scheduler_active", "1 while the decrement timer is armed", registry=r
        )
        self.fencing_token = Gauge(
            "memoria_fencing_token", "Lease transition count this region leads with", registry=r
        )
        self._outbox = Gauge(
            "memoria_sync_outbox_depth",
            "Events waiting in the outbox for the broker",
            registry=r,
        )
        self._reconnects = Gauge(
            "memoria_sync_listener_reconnects",
            "Times the sync listener lost its connection and reconnected (since start)",
            registry=r,
        )

        self.requests = Counter(
            "memoria_http_requests",
            "API requests answered, by method, route template and status code",
            ["method", "route", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "memoria_http_request_duration_seconds",
            "Time to answer an API request, by method and route template",
            ["method", "route"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

    def observe_request(self, method: str, route: str, code: int, seconds: float) -> None:
        self.requests.labels(method, route, str(code)).inc()
        self.latency.labels(method, route).observe(seconds)

    def track_last_decrement(self, timestamp: Callable[[], float]) -> None:
        Gauge(
            "memoria_last_decrement_timestamp_seconds",
            "When this region's store last recorded a decrement (its own or a peer's), "
            "Unix time; 0 if never",
            registry=self.registry,
        ).set_function(timestamp)

    def track_outbox(self, depth: Callable[[], float]) -> None:
        self._outbox.set_function(depth)

    def track_reconnects(self, count: Callable[[], float]) -> None:
        self._reconnects.set_function(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
