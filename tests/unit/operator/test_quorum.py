"""The pure step of leadership across clusters: ``decide_quorum(view)``.

Three clusters (us, eu, ap), one region in each; every view is built by hand with a fixed
monotonic clock, so each case states how long each vote has stood unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from memoria_operator.health import Health
from memoria_operator.leadership.lease import TransitionReason
from memoria_operator.leadership.quorum import (
    PROMOTE_REQUEST_ANNOTATION,
    Observations,
    Plan,
    QuorumState,
    QuorumView,
    Vote,
    decide_quorum,
    grant_seconds,
)
from memoria_operator.leadership.votes import emptied_vote, requested_vote, taken_vote
from memoria_operator.model import Region

NS = "memoria"
MONO = 1000.0
D = 4.0
CLUSTERS = ["us", "eu", "ap"]
HANDOVER_TO = "memoria.arcafutura.io/handover-to"


def region(cluster: str, *, role: str = "standby", promote: str | None = None) -> Region:
    return Region.from_body(
        {
            "metadata": {
                "namespace": NS,
                "name": f"region-{cluster}",
                "uid": f"uid-{cluster}",
                "annotations": {"memoria.arcafutura.io/promote": promote} if promote else {},
            },
            "spec": {
                "region": cluster,
                "role": role,
                "sync": {"backend": "redis", "connectionUrl": "redis://r:6379/0"},
                "quorum": {"cluster": cluster, "clusters": CLUSTERS},
            },
        }
    )


def ident(cluster: str) -> str:
    return f"{cluster}/{NS}/region-{cluster}"


def lease(holder: str | None = None, token: int = 0, **annotations: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"leaseTransitions": token}
    if holder:
        spec["holderIdentity"] = holder
    return {
        "metadata": {
            "name": "memoria-scheduler-default",
            "namespace": NS,
            "resourceVersion": "1",
            "annotations": dict(annotations),
        },
        "spec": spec,
    }


def healthy(r: Region, *, ok: bool = True, since: float = MONO - 100) -> dict[str, Health]:
    return {r.key: Health(healthy=ok, message="ok" if ok else "down", since=since, since_wall="")}


def view(
    cluster: str,
    votes: dict[str, Vote],
    local: Region,
    *,
    health: dict[str, Health] | None = None,
    state: QuorumState | None = None,
) -> QuorumView:
    return QuorumView(
        cluster=cluster,
        clusters=CLUSTERS,
        votes=votes,
        regions={local.key: local},
        health=healthy(local) if health is None else health,
        state=state or QuorumState(),
        mono=MONO,
        duration=D,
        skew=1.0,
        renew_interval=1.0,
        retry_interval=0.5,
    )


def votes(
    held: dict[str, dict[str, Any] | None], age: float = 0.0, **errors: str
) -> dict[str, Vote]:
    out = {}
    for c in CLUSTERS:
        if c in errors:
            out[c] = Vote(cluster=c, error=errors[c])
        else:
            out[c] = Vote(cluster=c, lease=held.get(c, lease()), unchanged_for=age)
    return out


def test_bootstrap_leader_takes_a_majority_with_token_one() -> None:
    us = region("us", role="leader")
    d = decide_quorum(view("us", votes({}), us))
    assert d.plan is Plan.ACQUIRE and d.identity == ident("us")
    assert d.token == 1 and sorted(d.votes) == ["ap", "eu"]
    assert d.reason is TransitionReason.BOOTSTRAP


def test_a_standby_waits_a_full_duration_before_bootstrapping_without_the_leader() -> None:
    eu = region("eu")
    assert decide_quorum(view("eu", votes({}, age=1.0), eu)).plan is Plan.KEEP
    assert decide_quorum(view("eu", votes({}, age=D + 0.5 * 1 + 0.1), eu)).plan is Plan.ACQUIRE


def test_a_held_vote_is_taken_only_after_a_full_duration_unchanged() -> None:
    eu = region("eu")
    held = {c: lease(ident("us"), 3) for c in CLUSTERS}
    assert decide_quorum(view("eu", votes(held, age=D - 0.1), eu)).plan is Plan.KEEP
    d = decide_quorum(view("eu", votes(held, age=D + 0.5 + 0.01), eu))
    assert d.plan is Plan.ACQUIRE and d.token == 4 and d.reason is TransitionReason.FAILOVER


def test_no_majority_without_the_own_vote() -> None:
    """A cluster whose own Lease cannot be read grants nothing, even with both peers free."""
    eu = region("eu")
    d = decide_quorum(view("eu", votes({}, age=10, eu="timeout"), eu))
    assert d.plan is Plan.KEEP and "cannot be read" in d.message


def test_a_minority_side_never_acquires() -> None:
    eu = region("eu")
    held = {c: lease(ident("us"), 3) for c in CLUSTERS}
    d = decide_quorum(view("eu", votes(held, age=60, us="timeout", ap="timeout"), eu))
    assert d.plan is Plan.KEEP and "1 of 3" in d.message


def test_the_token_exceeds_every_vote_read_even_one_not_taken() -> None:
    eu = region("eu")
    held = {"us": lease(ident("us"), 9), "eu": lease(None, 4), "ap": lease(None, 4)}
    d = decide_quorum(view("eu", votes(held, age=60), eu))
    assert d.plan is Plan.ACQUIRE and d.token == 10


def test_the_holder_renews_and_extends_only_while_healthy() -> None:
    us = region("us")
    held = {c: lease(ident("us"), 2) for c in CLUSTERS}
    d = decide_quorum(view("us", votes(held), us))
    assert d.plan is Plan.RENEW and d.extend and sorted(d.votes) == ["ap", "eu"]
    sick = healthy(us, ok=False, since=MONO - 2)
    d = decide_quorum(view("us", votes(held), us, health=sick))
    assert d.plan is Plan.RENEW and not d.extend  # keeps its votes, the grant runs out


def test_the_holder_steps_down_past_its_bound() -> None:
    us = region("us")
    held = {c: lease(ident("us"), 2) for c in CLUSTERS}
    sick = healthy(us, ok=False, since=MONO - 11)
    d = decide_quorum(view("us", votes(held), us, health=sick))
    assert d.plan is Plan.STEP_DOWN and d.reason is TransitionReason.FAILOVER and d.target is None


def test_peers_are_released_only_once_the_region_stopped_or_its_grant_ran_out() -> None:
    us = region("us")
    held = {"us": lease(None, 2), "eu": lease(ident("us"), 2), "ap": lease(ident("us"), 2)}
    state = QuorumState(granted_at=MONO - 1.0, stepped_down_at=MONO - 0.5)
    d = decide_quorum(view("us", votes(held), us, state=state))
    assert d.plan is Plan.KEEP and "waiting" in d.message
    stopped = {
        us.key: Health(
            healthy=True, message="ok", since=0, since_wall="", leading=False, last_ok=MONO - 0.1
        )
    }
    d = decide_quorum(view("us", votes(held), us, health=stopped, state=state))
    assert d.plan is Plan.RELEASE and sorted(d.votes) == ["ap", "eu"]
    later = QuorumState(granted_at=MONO - D, stepped_down_at=MONO - 0.5)
    assert decide_quorum(view("us", votes(held), us, state=later)).plan is Plan.RELEASE


def test_a_restarted_operator_waits_out_the_own_lease_before_releasing() -> None:
    us = region("us")
    held = {"us": lease(None, 2), "eu": lease(ident("us"), 2), "ap": lease(ident("us"), 2)}
    assert decide_quorum(view("us", votes(held, age=1.0), us)).plan is Plan.KEEP
    assert decide_quorum(view("us", votes(held, age=D), us)).plan is Plan.RELEASE


def test_switchover_request_travels_on_the_votes() -> None:
    eu = region("eu", promote="1700000000")
    held = {c: lease(ident("us"), 5) for c in CLUSTERS}
    d = decide_quorum(view("eu", votes(held), eu))
    assert d.forward == [(ident("eu"), "1700000000")]
    asked = {
        c: requested_vote(lease(ident("us"), 5), ident("eu"), "1700000000", 5) for c in CLUSTERS
    }
    d = decide_quorum(view("us", votes(asked), region("us")))
    assert d.plan is Plan.STEP_DOWN and d.target == ident("eu")
    assert d.reason is TransitionReason.SWITCHOVER
    # released with the target named: the target takes the votes at once, the others wait
    now = dt.datetime.now(dt.UTC)
    free = {
        c: emptied_vote(
            lease(ident("us"), 5), target=ident("eu"), reason=TransitionReason.SWITCHOVER, now=now
        )
        for c in CLUSTERS
    }
    d = decide_quorum(view("eu", votes(free), region("eu")))
    assert d.plan is Plan.ACQUIRE and d.token == 6 and d.reason is TransitionReason.SWITCHOVER
    assert decide_quorum(view("ap", votes(free, age=1.0), region("ap"))).plan is Plan.KEEP


def test_a_request_from_an_older_term_is_void() -> None:
    stale = requested_vote(lease(ident("us"), 5), ident("eu"), "1", 5)
    newer = taken_vote(
        stale,
        holder=ident("ap"),
        token=6,
        now=dt.datetime.now(dt.UTC),
        grant=3,
        reason=TransitionReason.FAILOVER,
    )
    assert PROMOTE_REQUEST_ANNOTATION not in newer["metadata"]["annotations"]
    kept = {
        **stale,
        "spec": {**stale["spec"], "leaseTransitions": 6, "holderIdentity": ident("ap")},
    }
    assert json.loads(kept["metadata"]["annotations"][PROMOTE_REQUEST_ANNOTATION])["token"] == 5
    assert Vote(cluster="us", lease=kept).request == (ident("eu"), "1", 5)  # kept, but void:
    d = decide_quorum(view("ap", votes({c: kept for c in CLUSTERS}), region("ap")))
    assert d.plan is Plan.RENEW


def test_observations_reset_on_every_new_version() -> None:
    seen = Observations()
    a = {"metadata": {"resourceVersion": "1"}}
    assert seen.age("us", a, 10.0) == 0.0
    assert seen.age("us", a, 13.0) == 3.0
    assert seen.age("us", {"metadata": {"resourceVersion": "2"}}, 14.0) == 0.0


def test_grant_is_the_duration_less_the_skew_bound() -> None:
    assert grant_seconds(10, 1) == 9
    assert grant_seconds(4, 1.5) == 2
    assert grant_seconds(1, 1) == 1
    assert (
        HANDOVER_TO
        in emptied_vote(
            lease(),
            target="x",
            reason=TransitionReason.SWITCHOVER,
            now=dt.datetime.now(dt.UTC),
        )["metadata"]["annotations"]
    )


def test_renewal_takes_back_a_free_vote_so_every_lease_carries_the_token() -> None:
    """A cluster that came back with its vote emptied gets the holder's token again at the
    next renewal: its standbys check the leader's decrements against that Lease."""
    eu = region("eu")
    held = {"us": lease(None, 3), "eu": lease(ident("eu"), 4), "ap": lease(ident("eu"), 4)}
    d = decide_quorum(view("eu", votes(held), eu))
    assert d.plan is Plan.RENEW and sorted(d.votes) == ["ap", "us"] and d.token == 4
    newer = {**held, "us": lease(ident("ap"), 9)}  # held by a newer term: never taken back
    assert decide_quorum(view("eu", votes(newer, age=60), eu)).votes == ["ap"]


def test_a_vote_left_on_an_older_term_neither_keeps_its_request_nor_its_token() -> None:
    """ap was cut off through two terms: its vote still carries term 1 and a request made
    then. The request is void (the term moved on), and the holder's renewal rewrites the vote
    with its own token, dropping the request."""
    us = region("us")
    old = requested_vote(lease(ident("us"), 1), ident("eu"), "100", 1)
    held = {"us": lease(ident("us"), 2), "eu": lease(ident("us"), 2), "ap": old}
    d = decide_quorum(view("us", votes(held), us))
    assert d.plan is Plan.RENEW and sorted(d.votes) == ["ap", "eu"] and d.token == 2
    renewed = taken_vote(
        old,
        holder=ident("us"),
        token=2,
        now=dt.datetime.now(dt.UTC),
        grant=3,
        reason=TransitionReason.SWITCHOVER,
    )
    assert PROMOTE_REQUEST_ANNOTATION not in renewed["metadata"]["annotations"]
