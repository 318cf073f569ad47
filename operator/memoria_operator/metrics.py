"""The operator's Prometheus metrics."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.leader = Gauge(
            "memoria_operator_group_leader",
            "1 for the region holding its group's scheduler Lease",
            ["namespace", "group", "region"],
            registry=r,
        )
        self.transitions = Counter(
            "memoria_operator_leadership_transitions",
            "Lease holder changes, by reason (Bootstrap, Switchover, Failover, Fenced, Released)",
            ["namespace", "group", "reason"],
            registry=r,
        )
        self.since_renew = Gauge(
            "memoria_operator_seconds_since_lease_renew",
            "Seconds since the operator last renewed the group's Lease",
            ["namespace", "group"],
            registry=r,
        )
        self.failover_seconds = Histogram(
            "memoria_operator_failover_duration_seconds",
            "From the leader first seen unhealthy to the standby holding the Lease",
            ["namespace", "group"],
            registry=r,
            buckets=(1, 2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 30, 60, 120),
        )
        self.reconciles = Counter(
            "memoria_operator_reconciles",
            "Region reconciliations, by result",
            ["result"],
            registry=r,
        )
        self._renewed: dict[tuple[str, str], float] = {}

    def renewed(self, namespace: str, group: str) -> None:
        key = (namespace, group)
        first = key not in self._renewed
        self._renewed[key] = time.monotonic()
        if first:
            self.since_renew.labels(namespace, group).set_function(
                lambda: time.monotonic() - self._renewed[key]
            )

    def set_holder(
        self, namespace: str, group: str, regions: list[str], holder: str | None
    ) -> None:
        # imported here: the leadership package imports this module when it loads
        from .leadership.lease import TransitionReason

        # a group's series exist from the start, at zero: a rate or increase() over them then
        # sees the first failover and the first transition of each kind, not only later ones
        self.failover_seconds.labels(namespace, group)
        for reason in TransitionReason:
            self.transitions.labels(namespace, group, reason)
        for name in regions:
            self.leader.labels(namespace, group, name).set(1 if name == holder else 0)

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
