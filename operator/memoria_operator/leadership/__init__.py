"""Leadership: one scheduler Lease per group, held by the operator for the leading region.

The Lease ``memoria-scheduler-<group>`` (in the regions' namespace) names the leading region in
``holderIdentity`` (``<namespace>/<name>``); ``leaseTransitions`` is the fencing token the
regions' stores check. Each tick (every retry interval) the manager looks at every group and
decides one step, purely (:func:`decide`), then performs it:

* **bootstrap**: no Lease yet: the one region with ``spec.role: leader`` gets it once healthy;
  two asking to lead get a ``LeaderConflict`` condition and nobody gets the Lease;
* **renew**: the holder is healthy: ``renewTime`` moves forward every renew interval;
* **switchover** (promote annotation or ``POST /admin/promote``): first the Lease is released
  (holder emptied, the target remembered in annotations), then, once the old leader says its
  scheduler stopped (its ``/healthz``) or the grant it saw has expired, the target acquires it.
  At no instant do two regions hold a valid grant;
* **failover**: the holder has been unhealthy for its ``unhealthyAfterSeconds`` and its grant has
  expired (it is no longer renewed once unhealthy): the best healthy eligible standby (priority,
  then name) acquires it. No automatic failback;
* **fencing by hand**: ``memoria.arcafutura.io/fenced=true`` moves leadership away (switchover
  steps) and keeps the region from ever being chosen.

All state lives in the Lease and the regions' status, so an operator restarted mid-way picks up
exactly where the previous one stopped.

One module per job:

* :mod:`.decide`: the rules, pure: :class:`GroupView` in, :class:`Decision` out;
* :mod:`.lease`: the Lease's vocabulary, times and expiry, and the next Lease as a pure function
  (shared with the operator's own election);
* :mod:`.status`: what each region's status says and which Events each transition posts;
* :mod:`.manager`: :class:`LeadershipManager`, the loop that reads, decides and writes.
"""

from .decide import Ack, AckReason, Decision, GroupView, decide
from .lease import (
    HANDOVER_FROM,
    HANDOVER_KEYS,
    HANDOVER_STARTED,
    DecisionKind,
    TransitionReason,
    micro_time,
    next_lease,
    parse_time,
)
from .manager import LeadershipManager
from .status import Event, TransitionEvent

__all__ = [
    "HANDOVER_FROM",
    "HANDOVER_KEYS",
    "HANDOVER_STARTED",
    "Ack",
    "AckReason",
    "Decision",
    "DecisionKind",
    "Event",
    "GroupView",
    "LeadershipManager",
    "TransitionEvent",
    "TransitionReason",
    "decide",
    "micro_time",
    "next_lease",
    "parse_time",
]
