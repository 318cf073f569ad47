"""Telling a cluster's regions how their group led across clusters stands: the group's view
in every region's status (holder, votes per cluster and why one does not count), the group's
write endpoint, the holder metric, and an Event to each region when the group's leader changes.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from memoria.contract import lease_name

from ..model import Region
from .decide import Ack, Decision, DecisionKind, GroupView
from .quorum import QuorumState, Vote
from .status import lease_status

if TYPE_CHECKING:
    from ..health import Health
    from .manager import LeadershipManager


def publish_group(
    manager: LeadershipManager,
    state: QuorumState,
    *,
    namespace: str,
    group: str,
    members: dict[str, Region],
    health: dict[str, Health],
    own: dict[str, Any] | None,
    votes: dict[str, Vote],
    message: str,
    acks: dict[str, Ack],
    misconfigured: bool = False,
) -> None:
    leadership = lease_status(group, own)
    holder = leadership["holder"]
    count = sum(1 for v in votes.values() if v.reachable and holder and v.holder == holder)
    leadership["quorum"] = {
        "cluster": manager.config.cluster_name,
        "votes": f"{count}/{len(votes)}" if votes else "",
        "clusters": [
            {
                "name": c,
                "reachable": v.reachable,
                "holder": v.holder or "",
                "transitions": v.token,
                **({"message": _vote_message(v, group)} if _vote_message(v, group) else {}),
            }
            for c, v in votes.items()
        ],
    }
    if len(votes) == 2:
        leadership["quorum"]["message"] = (
            "two clusters: a majority is both, so losing either stops the decrement until "
            "it returns; add a third cluster as witness (docs/install-across-clusters.md)"
        )
    local_holder = next((r for r in members.values() if r.identity == holder), None)
    serving = None
    view = GroupView(
        namespace=namespace,
        group=group,
        lease=own,
        regions=members,
        health=health,
        now=dt.datetime.now(dt.UTC),
        mono=time.monotonic(),
        renew_interval=manager.config.renew_interval_seconds,
    )
    if local_holder is not None and view.healthy(local_holder.key):
        serving = local_holder.key
    manager.label_serving(view, serving)
    leadership["service"] = f"memoria-{group}-rw"
    leadership["serving"] = serving.split("/", 1)[1] if serving else ""
    decision = Decision(
        kind=DecisionKind.KEEP,
        message=message,
        acks=acks,
        conflict=list(members) if misconfigured else [],
    )
    if holder != (state.last_holder or "") and own is not None:
        for region in members.values():
            body = manager.regions.get(region.key)
            if body is not None:
                manager.kube.event(
                    body,
                    "Normal",
                    "GroupLeaderChanged",
                    f"the group's leader is now {holder or 'nobody'} "
                    f"({leadership.get('lastTransitionReason', '')}, fencing token "
                    f"{leadership['transitions']}; votes {leadership['quorum']['votes']})",
                )
        state.last_holder = holder
    manager.metrics.set_holder(
        namespace,
        group,
        [r.name for r in members.values()],
        holder.rsplit("/", 1)[-1] if holder else None,
    )
    for region in members.values():
        manager.publish_region(view, decision, region, leadership)


def _vote_message(vote: Vote, group: str) -> str:
    """Why a cluster's vote does not count, if it cannot: unreadable, or never created."""
    if vote.error:
        return vote.error
    if vote.lease is None:
        return (
            f"Lease {lease_name(group)} does not exist in cluster {vote.cluster}: its operator "
            "creates it when it runs a region of the group; for a witness, create it by hand"
        )
    return ""
