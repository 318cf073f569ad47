"""The Lease bodies a quorum plan writes into a cluster's vote: renewed, taken, emptied (with
the handover target, if any), and carrying a switchover request. Pure: each takes the vote as
read and returns the body to write with its compare-and-set; :mod:`.quorum` holds the rules
that choose which."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from memoria.contract import HANDOVER_ANNOTATION, REASON_ANNOTATION

from .lease import TransitionReason, micro_time
from .quorum import PROMOTE_REQUEST_ANNOTATION, RENEWED_ANNOTATION


def renewed_vote(
    lease: dict[str, Any], *, now: dt.datetime, grant: int, extend: bool
) -> dict[str, Any]:
    """The holder's vote after a renewal round started at ``now``."""
    spec = dict(lease.get("spec") or {})
    if extend:
        spec.update(leaseDurationSeconds=grant, renewTime=micro_time(now))
    return _with(lease, spec, {RENEWED_ANNOTATION: micro_time(now)})


def taken_vote(
    lease: dict[str, Any],
    *,
    holder: str,
    token: int,
    now: dt.datetime,
    grant: int,
    reason: TransitionReason,
) -> dict[str, Any]:
    spec = {
        **(lease.get("spec") or {}),
        "holderIdentity": holder,
        "leaseTransitions": token,
        "acquireTime": micro_time(now),
        "renewTime": micro_time(now),
        "leaseDurationSeconds": grant,
    }
    return _with(
        lease,
        spec,
        {RENEWED_ANNOTATION: micro_time(now), REASON_ANNOTATION: str(reason)},
        drop=(HANDOVER_ANNOTATION, PROMOTE_REQUEST_ANNOTATION),
    )


def emptied_vote(
    lease: dict[str, Any], *, target: str | None, reason: TransitionReason, now: dt.datetime
) -> dict[str, Any]:
    """The vote released by its holder (renewTime kept: when the old grant ran out)."""
    spec = {k: v for k, v in (lease.get("spec") or {}).items() if k != "holderIdentity"}
    extra = {REASON_ANNOTATION: str(reason), RENEWED_ANNOTATION: micro_time(now)}
    drop: tuple[str, ...] = (PROMOTE_REQUEST_ANNOTATION,)
    if target:
        extra[HANDOVER_ANNOTATION] = target
    else:
        drop += (HANDOVER_ANNOTATION,)
    return _with(lease, spec, extra, drop=drop)


def requested_vote(lease: dict[str, Any], identity: str, value: str, token: int) -> dict[str, Any]:
    """The vote carrying a switchover request, valid in the term of ``token`` only."""
    spec = dict(lease.get("spec") or {})
    request = {"identity": identity, "value": value, "token": token}
    return _with(lease, spec, {PROMOTE_REQUEST_ANNOTATION: json.dumps(request, sort_keys=True)})


def _with(
    lease: dict[str, Any],
    spec: dict[str, Any],
    annotations: dict[str, str],
    *,
    drop: tuple[str, ...] = (),
) -> dict[str, Any]:
    meta = dict(lease.get("metadata") or {})
    merged = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in drop}
    merged.update(annotations)
    meta["annotations"] = merged
    return {**lease, "metadata": meta, "spec": spec}
