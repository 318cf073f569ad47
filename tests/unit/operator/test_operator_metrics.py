"""The operator's metrics: every group's series exist, at zero, before anything happens."""

from __future__ import annotations

from prometheus_client import generate_latest

from memoria_operator.metrics import OperatorMetrics


def test_a_groups_series_start_at_zero_so_the_first_failover_counts() -> None:
    metrics = OperatorMetrics()
    metrics.set_holder("ns", "g", ["a", "b"], "a")
    text = generate_latest(metrics.registry).decode()
    for reason in ("Bootstrap", "Switchover", "Failover", "Fenced", "Released"):
        assert (
            f'memoria_operator_leadership_transitions_total{{group="g",namespace="ns",'
            f'reason="{reason}"}} 0.0' in text
        )
    assert 'memoria_operator_failover_duration_seconds_count{group="g",namespace="ns"} 0.0' in text
    assert 'memoria_operator_group_leader{group="g",namespace="ns",region="a"} 1.0' in text
    assert 'memoria_operator_group_leader{group="g",namespace="ns",region="b"} 0.0' in text
