"""The I/O of leadership across clusters: read every cluster's vote, :func:`~.quorum.decide_quorum`
one step, write the votes it names, then hand the outcome to :mod:`.quorumstatus`, which tells
this cluster's regions (status, Events, the group's write endpoint).

Each peer cluster is reached through :class:`.peers.Peers`, from a kubeconfig mounted under
``MEMORIA_OPERATOR_PEERS_DIR/<name>/kubeconfig`` (the chart mounts one Secret per peer there).
A peer's credentials need nothing but get/update on the group's Lease in the group's namespace;
every call to a peer is bounded by the retry interval, so a cut link costs one retry interval,
never a stuck loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from memoria.contract import REASON_ANNOTATION, lease_name

from ..kube import Conflict, Kube, path_for
from ..model import Region
from .decide import Ack, AckReason
from .lease import API_VERSION, MANAGED_BY, TransitionReason, empty_lease
from .peers import Peers, own_api, quorum_problem, single_try, why_failed
from .quorum import (
    Plan,
    QuorumDecision,
    QuorumState,
    QuorumView,
    Vote,
    decide_quorum,
    term,
)
from .quorumstatus import publish_group
from .votes import emptied_vote, renewed_vote, requested_vote, taken_vote

if TYPE_CHECKING:
    from ..health import Health
    from .manager import LeadershipManager

log = logging.getLogger("memoria_operator.leadership.quorum")


class CrossCluster:
    """One per operator: the state of each group across clusters, and its steps."""

    def __init__(self, manager: LeadershipManager) -> None:
        self.manager = manager
        cfg = manager.config
        self.config = cfg
        # one call to another cluster: bounded so a cut link costs little, but not so tight
        # that a busy API server's answer counts as a lost vote
        timeout = min(max(cfg.retry_interval_seconds, 1.0), cfg.renew_interval_seconds)
        self.peers = Peers(cfg.peers_dir, timeout)
        self._timeout = timeout
        self._own: Kube | None = None
        self.states: dict[tuple[str, str], QuorumState] = {}

    @property
    def own(self) -> Kube:
        """This cluster's Lease is read and written with the same short bound as the peers',
        on a client of its own that never resends (made when a group first needs it)."""
        if self._own is None:
            self._own = Kube(single_try(own_api(self.manager.kube.api)), timeout=self._timeout)
        return self._own

    # -- reading ---------------------------------------------------------------------------

    def _client(self, cluster: str) -> Kube | str:
        return self.own if cluster == self.config.cluster_name else self.peers.client(cluster)

    def _read(self, cluster: str, path: str) -> tuple[dict[str, Any] | None, str | None]:
        client = self._client(cluster)
        if isinstance(client, str):
            return None, client
        try:
            return client.get(path), None
        except Exception as exc:
            return None, why_failed(exc)

    async def _votes(
        self, namespace: str, group: str, clusters: list[str], state: QuorumState
    ) -> dict[str, Vote]:
        path = path_for(API_VERSION, "Lease", namespace, lease_name(group))
        read = await asyncio.gather(*(asyncio.to_thread(self._read, c, path) for c in clusters))
        mono = time.monotonic()
        votes = {}
        for cluster, (got, failed) in zip(clusters, read, strict=True):
            lease, error = got, failed
            if cluster == self.config.cluster_name and error is None and lease is None:
                lease, error = await asyncio.to_thread(self._create_own, namespace, group)
            age = state.observations.age(cluster, lease, mono) if error is None else 0.0
            votes[cluster] = Vote(cluster=cluster, lease=lease, error=error, unchanged_for=age)
        return votes

    def _create_own(self, namespace: str, group: str) -> tuple[dict[str, Any] | None, str | None]:
        """This cluster's vote, created empty the first time (peers may not create Leases)."""
        body = empty_lease(namespace, lease_name(group), labels=MANAGED_BY)
        try:
            return self.own.create(path_for(API_VERSION, "Lease", namespace), body), None
        except Conflict:
            return self._read(
                self.config.cluster_name,
                path_for(API_VERSION, "Lease", namespace, lease_name(group)),
            )
        except Exception as exc:
            return None, why_failed(exc)

    # -- one step --------------------------------------------------------------------------

    async def step(
        self,
        namespace: str,
        group: str,
        members: dict[str, Region],
        health: dict[str, Health],
    ) -> None:
        problem = quorum_problem(members, self.config.cluster_name)
        state = self.states.setdefault((namespace, group), QuorumState())
        own: dict[str, Any] | None = None
        votes: dict[str, Vote] = {}
        acks: dict[str, Ack] = {}
        message = problem or ""
        if problem is None:
            own, votes, acks, message = await self._step(namespace, group, members, health, state)
        await asyncio.to_thread(
            partial(
                publish_group,
                self.manager,
                state,
                namespace=namespace,
                group=group,
                members=members,
                health=health,
                own=own,
                votes=votes,
                message=message,
                acks=acks,
                misconfigured=problem is not None,
            )
        )

    async def _step(
        self,
        namespace: str,
        group: str,
        members: dict[str, Region],
        health: dict[str, Health],
        state: QuorumState,
    ) -> tuple[dict[str, Any] | None, dict[str, Vote], dict[str, Ack], str]:
        """Read, decide, write: (this cluster's Lease, the votes, the answers to promote
        requests, what the step says)."""
        quorum = next(iter(members.values())).spec.quorum
        assert quorum is not None
        votes = await self._votes(namespace, group, list(quorum.clusters), state)
        view = QuorumView(
            cluster=self.config.cluster_name,
            clusters=list(quorum.clusters),
            votes=votes,
            regions=members,
            health=health,
            state=state,
            mono=time.monotonic(),
            duration=self.config.lease_duration_seconds,
            skew=self.config.max_clock_skew_seconds,
            renew_interval=self.config.renew_interval_seconds,
            retry_interval=self.config.retry_interval_seconds,
        )
        decision = decide_quorum(view)
        acks = await self._forward(namespace, group, view, decision)
        votes = await self._act(namespace, group, view, decision) or votes
        if _moving(view, decision):
            # a handover in flight: look again in a moment rather than a retry interval later
            # (each of its steps waits for the previous one to be seen)
            asyncio.get_running_loop().call_later(HANDOVER_POLL, self.manager.wake)
        return votes[self.config.cluster_name].lease, votes, acks, decision.message

    async def _act(
        self, namespace: str, group: str, view: QuorumView, decision: QuorumDecision
    ) -> dict[str, Vote] | None:
        """Carry out the plan; the votes as written (None: nothing written)."""
        if decision.plan is Plan.KEEP:
            return None
        round_ = _Round(
            namespace=namespace,
            group=group,
            view=view,
            decision=decision,
            now=dt.datetime.now(dt.UTC),
            started=time.monotonic(),
        )
        act = {
            Plan.STEP_DOWN: self._step_down,
            Plan.RELEASE: self._release,
            Plan.RENEW: self._renew,
            Plan.ACQUIRE: self._acquire,
        }[decision.plan]
        return await act(round_)

    async def _step_down(self, round_: _Round) -> dict[str, Vote] | None:
        r = round_
        view, decision, now, started = r.view, r.decision, r.now, r.started
        namespace, group = r.namespace, r.group
        state = view.state
        identity = decision.identity or ""
        own = view.own.lease or {}
        body = emptied_vote(own, target=decision.target, reason=_reason(decision), now=now)
        written = await self._write_all(namespace, group, {view.cluster: body})
        state.stepped_down_at = started
        state.renewed_at = None
        self._event(
            view,
            identity,
            "Warning" if decision.target is None else "Normal",
            "SteppingDown",
            f"{decision.message}; its scheduler stops now"
            + (
                ""
                if view.cluster in written
                else " (this cluster's Lease could not be written: the grant runs out)"
            ),
        )
        return _merged(view, written)

    async def _release(self, round_: _Round) -> dict[str, Vote] | None:
        r = round_
        view, decision, now = r.view, r.decision, r.now
        namespace, group = r.namespace, r.group
        identity = decision.identity or ""
        bodies = {
            c: emptied_vote(
                view.votes[c].lease or {},
                target=decision.target,
                reason=_reason(decision),
                now=now,
            )
            for c in decision.votes
        }
        written = await self._write_all(namespace, group, bodies)
        self._event(
            view,
            identity,
            "Normal",
            "VotesReleased",
            f"{decision.message} ({len(written)} of {len(bodies)} written)"
            + (f"; {decision.target} may take them now" if decision.target else ""),
        )
        return _merged(view, written)

    async def _renew(self, round_: _Round) -> dict[str, Vote] | None:
        r = round_
        view, decision, now, started = r.view, r.decision, r.now, r.started
        namespace, group = r.namespace, r.group
        grant = view.grant_seconds
        state = view.state
        identity = decision.identity or ""
        bodies = {
            c: (
                renewed_vote(
                    view.votes[c].lease or {}, now=now, grant=grant, extend=decision.extend
                )
                if view.votes[c].holder == identity and view.votes[c].token == decision.token
                else taken_vote(
                    view.votes[c].lease or {},
                    holder=identity,
                    token=decision.token,
                    now=now,
                    grant=grant,
                    reason=_reason_of(view.own),
                )
            )
            for c in decision.votes
        }
        written = await self._write_all(namespace, group, bodies)
        if len(written) + 1 >= view.majority:
            own_body = renewed_vote(
                view.own.lease or {}, now=now, grant=grant, extend=decision.extend
            )
            written.update(await self._write_all(namespace, group, {view.cluster: own_body}))
        if view.cluster in written and len(written) >= view.majority:
            state.renewed_at = started
            if decision.extend:
                state.granted_at = started
            self.manager.metrics.renewed(namespace, group)
            return _merged(view, written)
        if decision.extend and len(written) + 1 >= view.majority:
            # the own write failed, but a write whose answer was lost may have landed:
            # count its grant as extended, so the peers' votes wait it out
            state.granted_at = started
        # a majority is gone (or this cluster's own Lease). The region's grant runs out by
        # itself (renewTime + G, before anyone else may start), so a failed round is retried at
        # the next step, and only a grant about to run out is given up: one slow answer on a
        # busy link does not move leadership
        message = (
            f"{identity} could renew {len(written)} of {len(view.clusters)} votes "
            f"({view.majority} needed, this cluster's among them)"
        )
        granted = state.granted_at
        left = view.grant_seconds - (started - granted) if granted is not None else 0.0
        if left > view.retry_interval * 2:
            log.info(
                "group %s/%s: %s; retrying (its grant runs out in %.1fs)",
                namespace,
                group,
                message,
                left,
            )
            return _merged(view, written)
        failed = QuorumDecision(
            plan=Plan.STEP_DOWN,
            identity=identity,
            reason=TransitionReason.QUORUM_LOST,
            message=message,
        )
        log.warning("group %s/%s: %s; stepping down", namespace, group, failed.message)
        merged = _merged(view, written)
        fresh = QuorumView(**{**view.__dict__, "votes": merged})
        return await self._act(namespace, group, fresh, failed)

    async def _acquire(self, round_: _Round) -> dict[str, Vote] | None:
        r = round_
        view, decision, now, started = r.view, r.decision, r.now, r.started
        namespace, group = r.namespace, r.group
        grant = view.grant_seconds
        state = view.state
        identity = decision.identity or ""
        bodies = {
            c: taken_vote(
                view.votes[c].lease or {},
                holder=identity,
                token=decision.token,
                now=now,
                grant=grant,
                reason=_reason(decision),
            )
            for c in decision.votes
        }
        written = await self._write_all(namespace, group, bodies)
        if len(written) + 1 >= view.majority:
            own_body = taken_vote(
                view.own.lease or {},
                holder=identity,
                token=decision.token,
                now=now,
                grant=grant,
                reason=_reason(decision),
            )
            written.update(await self._write_all(namespace, group, {view.cluster: own_body}))
        if view.cluster in written and len(written) >= view.majority:
            return self._acquired(round_, written)
        if len(written) >= view.majority and view.cluster not in written:
            # the own write failed; its answer may have been lost after it landed: look
            own_now, error = await asyncio.to_thread(
                self._read,
                view.cluster,
                path_for(API_VERSION, "Lease", namespace, lease_name(group)),
            )
            spec = (own_now or {}).get("spec") or {}
            if (
                error is None
                and spec.get("holderIdentity") == identity
                and int(spec.get("leaseTransitions") or 0) == decision.token
            ):
                written[view.cluster] = own_now or {}
                return self._acquired(round_, written)
            if error is not None:
                # unknown: the region may hold a grant; keep the votes, they expire by
                # observation after a full Lease duration, as a lost holder's do
                log.warning(
                    "group %s/%s: %s: this cluster's Lease cannot be read back (%s); the votes "
                    "taken are left to expire",
                    namespace,
                    group,
                    identity,
                    error,
                )
                state.granted_at = started
                return _merged(view, written)
        # no majority: give back what was taken, so the others need not wait it out
        log.info(
            "group %s/%s: %s failed: %d of %d votes written; giving them back",
            namespace,
            group,
            identity,
            len(written),
            len(view.clusters),
        )
        back = {
            c: emptied_vote(b, target=None, reason=TransitionReason.RELEASED, now=now)
            for c, b in written.items()
        }
        await self._write_all(namespace, group, back)
        return None

    def _acquired(self, round_: _Round, written: dict[str, dict[str, Any]]) -> dict[str, Vote]:
        view, decision, started = round_.view, round_.decision, round_.started
        namespace, group = round_.namespace, round_.group
        state = view.state
        state.renewed_at = state.granted_at = started
        state.stepped_down_at = None
        identity = decision.identity or ""
        log.info(
            "group %s/%s: %s [fencing token %d]",
            namespace,
            group,
            decision.message,
            decision.token,
        )
        self.manager.metrics.transitions.labels(namespace, group, str(_reason(decision))).inc()
        self._event(
            view,
            identity,
            "Normal",
            "LeadershipAcquired",
            f"{decision.message}; fencing token {decision.token}",
        )
        return _merged(view, written)

    async def _write_all(
        self, namespace: str, group: str, bodies: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """Write each cluster's vote (guarded by the resourceVersion it carries) in parallel;
        the ones written."""
        path = path_for(API_VERSION, "Lease", namespace, lease_name(group))

        def write(cluster: str, body: dict[str, Any]) -> dict[str, Any] | None:
            client = self._client(cluster)
            if isinstance(client, str):
                return None
            try:
                return client.replace(path, body)
            except Exception as exc:
                log.info("vote in cluster %s not written: %s", cluster, why_failed(exc))
                return None

        items = list(bodies.items())
        done = await asyncio.gather(*(asyncio.to_thread(write, c, b) for c, b in items))
        return {c: w for (c, _), w in zip(items, done, strict=True) if w is not None}

    async def _forward(
        self, namespace: str, group: str, view: QuorumView, decision: QuorumDecision
    ) -> dict[str, Ack]:
        """Put this cluster's promote requests on every vote it can reach (the holder's
        operator, wherever it runs, sees them there); answer each request once, when it is
        on at least one vote or refused."""
        acks: dict[str, Ack] = {}
        holder = view.group_holder()
        for region in view.regions.values():
            value = region.promote_request
            if not value or value == (region.status.get("leadership") or {}).get("lastPromotion"):
                continue
            if region.identity == holder:
                acks[region.key] = Ack(
                    value=value,
                    reason=AckReason.ALREADY_LEADER,
                    message=f"{region.identity} already leads the group",
                )
            elif not region.may_lead or not view.healthy(region):
                why = "it is fenced" if region.fenced else "it may not lead now"
                if region.may_lead:
                    why = "it is not healthy"
                acks[region.key] = Ack(
                    value=value,
                    reason=AckReason.PROMOTION_REFUSED,
                    message=f"promotion of {region.identity} refused: {why}",
                )
        for identity, value in decision.forward:
            current = term(view)
            bodies = {
                c: requested_vote(v.lease, identity, value, current)
                for c, v in view.votes.items()
                if v.reachable and v.lease is not None
            }
            written = await self._write_all(namespace, group, bodies)
            if not written:
                continue  # asked again at the next step
            region = view.by_identity[identity]
            acks[region.key] = Ack(
                value=value,
                reason=AckReason.SWITCHOVER_STARTED,
                message=(
                    f"switchover to {identity} requested on {len(written)} of "
                    f"{len(view.clusters)} clusters' Leases ({value})"
                ),
            )
        return acks

    # -- telling the regions ---------------------------------------------------------------

    def _event(
        self, view: QuorumView, identity: str, type_: str, reason: str, message: str
    ) -> None:
        region = view.by_identity.get(identity)
        body = self.manager.regions.get(region.key) if region is not None else None
        if body is not None:
            self.manager.kube.event(body, type_, reason, message)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class _Round:
    """One plan being carried out: the step's view and decision, and when it started."""

    namespace: str
    group: str
    view: QuorumView
    decision: QuorumDecision
    now: dt.datetime  # wall clock: what renewTime says
    started: float  # monotonic: what the grant is counted from


# how soon to look again while a switchover moves between clusters
HANDOVER_POLL = 0.15


def _moving(view: QuorumView, decision: QuorumDecision) -> bool:
    """Whether a switchover involving this cluster is under way: a step down or release just
    written, a request just forwarded, or votes that name a local region as the target of a
    handover or a request."""
    if decision.plan in (Plan.STEP_DOWN, Plan.RELEASE) or decision.forward:
        return True
    local = view.by_identity
    if view.own.holder is None and any(view.held_by(i) for i in local):
        return True  # stepped down, its votes not released yet
    pending = {i for i in local if i != view.own.holder}
    return any(
        v.reachable
        and (
            (v.holder is None and v.handover_to in pending) or (v.request or ("", ""))[0] in pending
        )
        for v in view.votes.values()
    )


def _reason(decision: QuorumDecision) -> TransitionReason:
    return decision.reason or TransitionReason.RELEASED


def _reason_of(vote: Vote) -> TransitionReason:
    return (
        TransitionReason.recorded(vote.annotations.get(REASON_ANNOTATION))
        or TransitionReason.FAILOVER
    )


def _merged(view: QuorumView, written: dict[str, dict[str, Any]]) -> dict[str, Vote]:
    return {
        c: (Vote(cluster=c, lease=written[c], unchanged_for=0.0) if c in written else v)
        for c, v in view.votes.items()
    }
