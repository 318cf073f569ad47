"""Leadership across clusters: a majority of Leases, one in each cluster of the group.

A group whose regions set ``spec.quorum`` has one scheduler Lease (``memoria-scheduler-<group>``)
in every cluster it names. Each is a *vote*. A region leads when its operator has written its
identity (``<cluster>/<namespace>/<name>``) into a majority of them, its own cluster's among them,
within the last Lease duration; the region itself only ever reads its own cluster's Lease, as in
a single cluster. The argument for why two regions never both lead is in docs/leadership.md
("Leadership across clusters"); the rules that carry it are:

* **Expiry by observation.** A vote held by someone else is taken only after this operator has
  seen it unchanged for a full Lease duration ``D`` on its own monotonic clock (as client-go's
  leader election does), so no two clocks are ever compared to take a vote.
* **Compare-and-set per vote.** Every write carries the ``resourceVersion`` it read; of two
  candidates racing for one vote, one fails. A candidate leads only with a majority of votes, and
  two majorities always share a vote.
* **The own vote last, and short.** A round writes the peers' votes first and its own cluster's
  Lease (the one the region reads) only when the peers already make a majority, with
  ``renewTime`` = the round's start and a grant ``G = D - S`` (``S``: the clock-skew bound). The
  region stops by itself at ``renewTime + G`` on its clock, before any other operator can have
  waited out ``D`` since that round's writes.
* **A monotonic fencing token across clusters.** A new holder's token is one more than the highest
  ``leaseTransitions`` among every vote it read, and it writes that token into each vote it takes.
  Its majority shares a vote with the previous holder's, so the token only grows.
* **Stepping down is two steps.** The own Lease is emptied first (the region stops at once); the
  peers' votes are released only once the region said it stopped or ``D`` has passed since its
  grant was last extended.

This module is the pure part: reading votes and deciding one step. :mod:`.votes` builds the
Lease bodies a step writes; :mod:`.crosscluster` does the I/O.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from memoria.contract import HANDOVER_ANNOTATION, REASON_ANNOTATION

from ..config import GROUP
from ..health import Health
from ..model import Region
from .lease import TransitionReason

# on a vote: a switchover asked for in another cluster, "<identity> <request value>"
PROMOTE_REQUEST_ANNOTATION = f"{GROUP}/promote-request"
# on a vote: when the holder's operator last renewed it (moves even when the grant does not)
RENEWED_ANNOTATION = f"{GROUP}/quorum-renewed"


class Plan(StrEnum):
    KEEP = "keep"  # write nothing
    RENEW = "renew"  # rewrite the holder's votes (and extend its grant when it is healthy)
    ACQUIRE = "acquire"  # take a majority of votes for a local region, with a new token
    STEP_DOWN = "step-down"  # empty the own Lease: the local holder stops at once
    RELEASE = "release"  # empty the peers' votes still naming a local region that stopped


@dataclass(frozen=True, kw_only=True)
class Vote:
    """One cluster's Lease as this round read it."""

    cluster: str
    lease: dict[str, Any] | None = None
    error: str | None = None  # could not be read: why
    unchanged_for: float = 0.0  # how long this operator has seen this version unchanged

    @property
    def reachable(self) -> bool:
        return self.error is None

    @property
    def spec(self) -> dict[str, Any]:
        return (self.lease or {}).get("spec") or {}

    @property
    def annotations(self) -> dict[str, str]:
        return ((self.lease or {}).get("metadata") or {}).get("annotations") or {}

    @property
    def holder(self) -> str | None:
        return self.spec.get("holderIdentity") or None

    @property
    def token(self) -> int:
        return int(self.spec.get("leaseTransitions") or 0)

    @property
    def handover_to(self) -> str | None:
        return self.annotations.get(HANDOVER_ANNOTATION) or None

    @property
    def request(self) -> tuple[str, str, int] | None:
        """(identity, value, token) of a switchover asked for on this vote: valid only in the
        term whose token it carries (see :func:`_newest_request`)."""
        try:
            raw = json.loads(self.annotations.get(PROMOTE_REQUEST_ANNOTATION) or "null")
            identity, value, token = str(raw["identity"]), str(raw["value"]), int(raw["token"])
        except (ValueError, TypeError, KeyError):
            return None
        return (identity, value, token) if identity else None


class Observations:
    """When this operator first saw each vote's current version, on its monotonic clock: a
    vote is expired for it once that version has stood for a full Lease duration. A restarted
    operator starts with none, so it waits a full duration before taking anything."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}

    def age(self, cluster: str, lease: dict[str, Any] | None, mono: float) -> float:
        version = str(((lease or {}).get("metadata") or {}).get("resourceVersion") or "")
        seen = self._seen.get(cluster)
        if seen is None or seen[0] != version:
            self._seen[cluster] = (version, mono)
            return 0.0
        return mono - seen[1]


@dataclass
class QuorumState:
    """What one operator remembers of one group between steps (lost on restart: every rule
    still holds without it, only more slowly)."""

    observations: Observations = field(default_factory=Observations)
    granted_at: float | None = None  # monotonic start of the last round that extended the grant
    renewed_at: float | None = None  # monotonic start of the last successful round
    stepped_down_at: float | None = None  # when the own Lease was emptied for a local holder
    last_holder: str | None = None  # the group holder last reported (Events on change)


@dataclass(frozen=True, kw_only=True)
class QuorumView:
    cluster: str
    clusters: list[str]
    votes: dict[str, Vote]
    regions: dict[str, Region]  # this cluster's regions of the group, by key
    health: dict[str, Health]
    state: QuorumState
    mono: float
    duration: float  # D: the Lease duration
    skew: float  # S: the clock-skew bound
    renew_interval: float
    retry_interval: float

    @property
    def majority(self) -> int:
        return len(self.clusters) // 2 + 1

    @property
    def own(self) -> Vote:
        return self.votes[self.cluster]

    @property
    def by_identity(self) -> dict[str, Region]:
        return {r.identity: r for r in self.regions.values()}

    def healthy(self, region: Region) -> bool:
        h = self.health.get(region.key)
        return h is not None and h.healthy

    @property
    def grant_seconds(self) -> int:
        return grant_seconds(self.duration, self.skew)

    def held_by(self, identity: str) -> list[str]:
        return [c for c, v in self.votes.items() if v.reachable and v.holder == identity]

    def group_holder(self) -> str | None:
        """The holder a majority of readable votes name, else the one the own Lease names."""
        counts: dict[str, int] = {}
        for vote in self.votes.values():
            if vote.reachable and vote.holder:
                counts[vote.holder] = counts.get(vote.holder, 0) + 1
        for holder, count in counts.items():
            if count >= self.majority:
                return holder
        return self.own.holder


def grant_seconds(duration: float, skew: float) -> int:
    """How long the region may believe a renewal: the Lease duration less the skew bound, in
    the whole seconds a Lease can say."""
    return max(1, math.floor(duration - skew))


@dataclass(kw_only=True)
class QuorumDecision:
    plan: Plan
    identity: str | None = None  # renew/acquire/step-down/release: the local region concerned
    target: str | None = None  # step-down/release: who was asked to follow (a switchover)
    reason: TransitionReason | None = None
    message: str = ""
    votes: list[str] = field(default_factory=list)  # acquire/renew/release: the votes to write
    token: int = 0  # acquire: the new fencing token
    extend: bool = True  # renew: extend the region's grant (False while it is unhealthy)
    forward: list[tuple[str, str]] = field(default_factory=list)  # (identity, request value)


def term(view: QuorumView) -> int:
    """The current term: the highest token among the votes read."""
    return max((v.token for v in view.votes.values() if v.reachable), default=0)


def _newest_request(view: QuorumView, exclude: str | None) -> tuple[str, str] | None:
    """The newest switchover request made in the current term (a request left on a vote from
    an older term, answered or not, is void), for a region of the group's clusters."""
    current = term(view)
    found = [
        (r[0], r[1])
        for v in view.votes.values()
        if v.reachable and (r := v.request) is not None and r[2] == current
    ]
    found = [r for r in found if r[0] != exclude and r[0].split("/", 1)[0] in view.clusters]
    if not found:
        return None

    def order(item: tuple[str, str]) -> tuple[int, float, str]:
        try:
            return 1, float(item[1]), item[0]
        except ValueError:
            return 0, 0.0, item[1]

    return max(found, key=order)


def _leading(view: QuorumView, region: Region) -> QuorumDecision:
    """A local region holds the own Lease: renew, or step down and say why."""
    identity = region.identity
    request = _newest_request(view, identity)
    if not region.may_lead:
        reason = TransitionReason.FENCED if region.fenced else TransitionReason.RELEASED
        why = "is fenced" if region.fenced else "has its scheduler disabled"
        return QuorumDecision(
            plan=Plan.STEP_DOWN, identity=identity, reason=reason, message=f"{identity} {why}"
        )
    if request is not None:
        return QuorumDecision(
            plan=Plan.STEP_DOWN,
            identity=identity,
            target=request[0],
            reason=TransitionReason.SWITCHOVER,
            message=f"switchover from {identity} to {request[0]} (asked in its cluster)",
        )
    health = view.health.get(region.key)
    healthy = health is not None and health.healthy
    if not healthy:
        unhealthy_for = view.mono - health.since if health else 0.0
        if unhealthy_for >= region.spec.failover.unhealthy_after_seconds:
            why = health.message if health else "not probed"
            return QuorumDecision(
                plan=Plan.STEP_DOWN,
                identity=identity,
                reason=TransitionReason.FAILOVER,
                message=f"{identity} unhealthy for {unhealthy_for:.1f}s ({why})",
            )
    last = view.state.renewed_at
    if last is not None and view.mono - last < view.renew_interval * 0.9:
        return QuorumDecision(plan=Plan.KEEP, identity=identity)
    # the votes it holds, and any other it may take (free, or expired by observation): every
    # reachable Lease then carries the holder's token, which is what each cluster's standbys
    # check the leader's decrement against
    token = view.own.token
    votes = [
        c
        for c, v in view.votes.items()
        if c != view.cluster
        and (v.holder == identity or (_takeable(view, v, identity, 0.0) and v.token <= token))
    ]
    return QuorumDecision(
        plan=Plan.RENEW, identity=identity, votes=votes, extend=healthy, token=token
    )


def _releasing(view: QuorumView, identity: str) -> QuorumDecision:
    """The own Lease was emptied but peers' votes still name the local region ``identity``."""
    region = view.by_identity.get(identity)
    health = view.health.get(region.key) if region is not None else None
    stepped = view.state.stepped_down_at
    stopped = region is None or (
        health is not None
        and health.leading is False
        and stepped is not None
        and health.last_ok is not None
        and health.last_ok >= stepped
    )
    granted = view.state.granted_at
    if granted is not None:
        ran_out = view.mono - granted >= view.duration
    else:  # restarted since: the own Lease's last change is as old as its grant can be
        ran_out = view.own.unchanged_for >= view.duration
    if not (stopped or ran_out):
        return QuorumDecision(
            plan=Plan.KEEP, message=f"waiting for {identity} to stop before releasing its votes"
        )
    return QuorumDecision(
        plan=Plan.RELEASE,
        identity=identity,
        target=view.own.handover_to,
        reason=TransitionReason.recorded(view.own.annotations.get(REASON_ANNOTATION))
        or TransitionReason.RELEASED,
        votes=[c for c in view.held_by(identity) if c != view.cluster],
        message=f"{identity} stopped; its votes are released",
    )


def _candidate(view: QuorumView) -> tuple[Region | None, float, str]:
    """The local region to contend for the votes, the extra wait before it may, and why."""
    local = view.by_identity
    targets = {v.handover_to for v in view.votes.values() if v.reachable and v.holder is None}
    requested = _newest_request(view, None)
    for identity in [*sorted(t for t in targets if t), requested[0] if requested else ""]:
        region = local.get(identity)
        if region is not None and region.may_lead and view.healthy(region):
            return region, 0.0, "promoted"
    rank = view.clusters.index(view.cluster) if view.cluster in view.clusters else 0
    stagger = rank * view.retry_interval
    fresh = all(
        v.token == 0 and v.holder is None for v in view.votes.values() if v.reachable and v.lease
    )
    leaders = [r for r in local.values() if r.spec.role == "leader"]
    if fresh and leaders:
        region = leaders[0]
        if region.may_lead and view.healthy(region):
            return region, 0.0, "bootstrap"
        return None, 0.0, f"waiting for the bootstrap leader {region.identity}"
    best = sorted(
        (r for r in local.values() if r.may_lead and view.healthy(r) and r.spec.failover.eligible),
        key=lambda r: (-r.spec.priority, r.key),
    )
    if not best:
        return None, 0.0, "no healthy eligible region in this cluster"
    extra = stagger + (view.duration if fresh else 0.0)  # bootstrap: the leader's cluster first
    return best[0], extra, "failover" if not fresh else "bootstrap"


def _takeable(view: QuorumView, vote: Vote, identity: str, extra: float) -> bool:
    if not vote.reachable or vote.lease is None:
        return False
    if vote.holder == identity:
        return True
    if vote.holder is None:
        if vote.handover_to in (None, identity):
            return vote.unchanged_for >= (0.0 if vote.handover_to == identity else extra)
        return vote.unchanged_for >= view.duration + extra  # the target had its chance
    return vote.unchanged_for >= view.duration + extra


def decide_quorum(view: QuorumView) -> QuorumDecision:
    """One step for this cluster's part of a group across clusters. Pure."""
    own = view.own
    local = view.by_identity
    forward = _forwards(view)
    if not own.reachable:
        return QuorumDecision(
            plan=Plan.KEEP,
            message=f"this cluster's Lease cannot be read ({own.error}); nothing is granted",
            forward=forward,
        )
    if own.holder in local:
        decision = _leading(view, local[own.holder])
    else:
        stale = [i for i in local if view.held_by(i) and i != own.holder]
        if own.holder is None and stale:
            decision = _releasing(view, stale[0])
        elif own.holder is None or own.holder not in local:
            decision = _contend(view)
        else:  # unreachable in practice: own.holder in local is handled above
            decision = QuorumDecision(plan=Plan.KEEP)
    decision.forward = forward
    return decision


def _contend(view: QuorumView) -> QuorumDecision:
    holder = view.group_holder()
    region, extra, why = _candidate(view)
    if region is None:
        return QuorumDecision(plan=Plan.KEEP, message=f"{holder or 'nobody'} leads; {why}")
    identity = region.identity
    takeable = [c for c, v in view.votes.items() if _takeable(view, v, identity, extra)]
    if view.cluster not in takeable or len(takeable) < view.majority:
        return QuorumDecision(
            plan=Plan.KEEP,
            message=(
                f"{holder or 'nobody'} leads; {identity} could take {len(takeable)} of "
                f"{len(view.clusters)} votes ({view.majority} needed, this cluster's among them)"
            ),
        )
    token = max(v.token for v in view.votes.values() if v.reachable) + 1
    reason = {
        "promoted": TransitionReason.SWITCHOVER,
        "bootstrap": TransitionReason.BOOTSTRAP,
    }.get(why, TransitionReason.FAILOVER)
    return QuorumDecision(
        plan=Plan.ACQUIRE,
        identity=identity,
        reason=reason,
        token=token,
        votes=[c for c in takeable if c != view.cluster],
        message=f"{identity} takes {len(takeable)} of {len(view.clusters)} votes ({why})",
    )


def _forwards(view: QuorumView) -> list[tuple[str, str]]:
    """Promote requests of local regions not yet on the votes: (identity, value)."""
    out = []
    on_votes = {r[:2] for v in view.votes.values() if v.reachable and (r := v.request)}
    holder = view.group_holder()
    for region in view.regions.values():
        value = region.promote_request
        if not value or value == (region.status.get("leadership") or {}).get("lastPromotion"):
            continue
        if region.identity == holder or (region.identity, value) in on_votes:
            continue
        if region.may_lead and view.healthy(region):
            out.append((region.identity, value))
    return out
