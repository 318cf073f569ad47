"""What a user sees of a group across three clusters (issue 18): the same leader in every
cluster's `kubectl get mreg -o wide`, a switchover asked for in the target's own cluster, the
fencing token growing in every cluster's Lease, Events on both sides, and clear refusals of a
spec.quorum that cannot work.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from testbed import wait_until
from testbed.federation import NAMESPACE, FederationBed

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

PROMOTE = "memoria.arcafutura.io/promote"


def wide(bed: FederationBed, cluster: str) -> dict[str, dict[str, str]]:
    """`kubectl get mreg -o wide` in ``cluster``, by region name."""
    out = bed.kube(cluster).kubectl("get", "mreg", "-n", NAMESPACE, "-o", "wide").stdout
    header, *rows = out.rstrip().splitlines()
    # columns by where their titles start (an empty cell is blanks, not a missing word)
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    bounds = [*zip(starts, [*starts[1:], None], strict=True)]
    table = [{n: row[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)} for row in rows]
    return {row["NAME"]: row for row in table}


def reasons(bed: FederationBed, cluster: str) -> list[str]:
    out = bed.kube(cluster).kubectl("get", "events", "-n", NAMESPACE, "-o", "json").stdout
    return [e["reason"] for e in json.loads(out)["items"]]


def tokens(bed: FederationBed) -> dict[str, int]:
    return {
        n: int(((bed.lease(n) or {}).get("spec") or {}).get("leaseTransitions") or 0)
        for n in bed.names
    }


def test_one_leader_seen_everywhere_and_a_switchover_from_the_targets_cluster(
    tmp_path: Path,
) -> None:
    with FederationBed(tmp_path, bound=3) as bed:
        us = "us/memoria/region-us"
        wait_until(lambda: bed.leading("us"), 60, "region-us to lead (spec.role: leader)")
        for cluster in bed.names:
            # a status written between the leader's writes may say 2/3 for a moment
            row = wait_until(
                lambda c=cluster: (
                    (r := wide(bed, c)[f"region-{c}"]).get("HOLDER") == us
                    and r.get("VOTES") == "3/3"
                    and r
                ),
                30,
                f"{cluster}'s status to name {us} with all three votes",
            )
            assert row["ROLE"] == ("leader" if cluster == "us" else "standby")
            assert bed.holder(cluster) == us  # the Lease itself, in every cluster
        assert not bed.leading("eu") and not bed.leading("ap")
        before = tokens(bed)
        assert len(set(before.values())) == 1, before

        # the switchover is asked for where the target runs: ap's own cluster
        asked = time.monotonic()
        bed.kube("ap").kubectl(
            "annotate", "mreg", "region-ap", "-n", NAMESPACE, f"{PROMOTE}=1700000000"
        )
        wait_until(lambda: bed.leading("ap"), 30, "region-ap to lead after its promotion")
        took = time.monotonic() - asked
        print(f"switchover us -> ap across clusters: {took:.2f}s")
        assert not bed.leading("us") and not bed.leading("eu")
        ap = "ap/memoria/region-ap"
        for cluster in bed.names:
            wait_until(
                lambda c=cluster: wide(bed, c)[f"region-{c}"].get("HOLDER") == ap,
                30,
                f"{cluster}'s status to name {ap}",
            )
        after = tokens(bed)
        assert all(after[n] > before[n] for n in bed.names), (before, after)
        assert len(set(after.values())) == 1, after
        assert {"SwitchoverStarted", "LeadershipAcquired"} <= set(reasons(bed, "ap"))
        assert {"SteppingDown", "VotesReleased"} <= set(reasons(bed, "us"))
        assert "GroupLeaderChanged" in reasons(bed, "eu")

        # a region whose spec.quorum.cluster is not this operator's: named, not acted on
        wrong = bed.manifest("eu")
        wrong["metadata"]["name"] = "stray"
        wrong["spec"].update(region="stray", role="standby", group="stray")
        wrong["spec"]["quorum"] = {"cluster": "us", "clusters": ["us", "eu", "ap"]}
        bed.kube("eu").apply(wrong, NAMESPACE)

        def refused() -> str:
            body = json.loads(
                bed.kube("eu").kubectl("get", "mreg", "stray", "-n", NAMESPACE, "-o", "json").stdout
            )
            for cond in (body.get("status") or {}).get("conditions") or []:
                if cond["type"] == "LeadershipValid" and cond["status"] == "False":
                    return str(cond["message"])
            return ""

        message = wait_until(refused, 30, "the stray region's LeadershipValid=False")
        assert "spec.quorum.cluster is 'us'" in message and "cluster 'eu'" in message, message
        assert bed.leading("ap")  # the real group is untouched

        # the API server refuses a cluster list without the region's own cluster, naming it
        bad = bed.manifest("eu")
        bad["metadata"]["name"] = "bad"
        bad["spec"]["quorum"] = {"cluster": "eu", "clusters": ["us", "ap"]}
        proc = bed.kube("eu").kubectl(
            "apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(bad), check=False
        )
        assert proc.returncode != 0
        assert "spec.quorum.clusters must include spec.quorum.cluster" in proc.stderr
