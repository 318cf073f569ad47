"""A MemoriaRegion as the operator reads it: the CR body turned into a typed model.

The API server has already validated and defaulted the spec (the CRD schema); this model adds
the checks a schema cannot express (an IANA time zone, consistent choices) and gives the rest of
the operator names instead of dictionary paths.
"""

from __future__ import annotations

from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memoria.contract import holder_identity, lease_name, url_scheme_problem

from .config import FENCED_ANNOTATION, PROMOTE_ANNOTATION

# spec.role (requested at bootstrap) and status.role (actual, from the Lease); the CRD's enum
Role = Literal["leader", "standby"]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class SecretKeyRef(_Model):
    name: str
    key: str = "url"


class SyncSpec(_Model):
    enabled: bool = True
    backend: str
    connection_url: str | None = Field(default=None, alias="connectionUrl")
    connection_secret_ref: SecretKeyRef | None = Field(default=None, alias="connectionSecretRef")
    channel: str | None = None  # unset: the runtime's default for the backend
    table: str | None = None
    realtime_replication: bool = Field(default=True, alias="realtimeReplication")
    replica_promotion: str = Field(default="leader", alias="replicaPromotion")


class PrivacySpec(_Model):
    floor: int = -15
    ceiling: int = 15


# spec.scheduler.control: who tells the pods whether they lead (the CRD's enum)
SchedulerControl = Literal["lease", "env"]


class SchedulerSpec(_Model):
    time_zone: str = Field(default="UTC", alias="timeZone")
    enabled: bool = True
    control: SchedulerControl = "lease"
    rollout_timeout_seconds: int = Field(default=120, alias="rolloutTimeoutSeconds")


class PersistenceSpec(_Model):
    enabled: bool = True
    size: str = "1Gi"
    storage_class_name: str | None = Field(default=None, alias="storageClassName")


class StoreSpec(_Model):
    connection_secret_ref: SecretKeyRef | None = Field(default=None, alias="connectionSecretRef")
    persistence: PersistenceSpec = Field(default_factory=PersistenceSpec)

    @property
    def embedded(self) -> bool:
        """True when the pods keep their memories in an SQLite file of their own."""
        return self.connection_secret_ref is None


class FailoverSpec(_Model):
    health_url: str | None = Field(default=None, alias="healthUrl")
    probe_service: bool = Field(default=False, alias="probeService")
    probe_pods: bool = Field(default=True, alias="probePods")
    unhealthy_after_seconds: int = Field(default=10, alias="unhealthyAfterSeconds")
    eligible: bool = True


class QuorumSpec(_Model):
    """A group whose regions live in several clusters: its leadership is a majority of Leases,
    one per cluster named here (docs/leadership.md, "Leadership across clusters")."""

    cluster: str  # the cluster this region runs in, as the group names it
    clusters: list[str]  # every cluster of the group, this one included; also the failover order


class Resources(_Model):
    requests: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)


def _default_resources() -> Resources:
    """The CRD's default for an absent spec.resources (as the API server applies it: only when
    the whole object is missing), for bodies that never passed an API server."""
    return Resources(requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "512Mi"})


class RegionSpec(_Model):
    region: str
    role: Role = "standby"
    group: str = "default"
    priority: int = 100
    image: str | None = None
    image_pull_policy: str = Field(default="IfNotPresent", alias="imagePullPolicy")
    replicas: int = 1
    resources: Resources = Field(default_factory=_default_resources)
    sync: SyncSpec
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    store: StoreSpec = Field(default_factory=StoreSpec)
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, alias="apiKeySecretRef")
    failover: FailoverSpec = Field(default_factory=FailoverSpec)
    quorum: QuorumSpec | None = None

    @field_validator("api_key_secret_ref", mode="before")
    @classmethod
    def _api_key_default(cls, value: Any) -> Any:
        # the CRD defaults this reference's key to "api-key", not "url" like the others
        if isinstance(value, dict) and "key" not in value:
            return {**value, "key": "api-key"}
        return value


class Region(_Model):
    """Identity, spec and the annotations the operator reacts to."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: RegionSpec
    annotations: dict[str, str] = Field(default_factory=dict)
    status: dict[str, Any] = Field(default_factory=dict)
    created: str = ""

    @classmethod
    def from_body(cls, body: Any) -> Region:
        meta = body["metadata"]
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            spec=RegionSpec.model_validate(dict(body["spec"])),
            annotations=dict(meta.get("annotations") or {}),
            status=dict(body.get("status") or {}),
            created=str(meta.get("creationTimestamp") or ""),
        )

    @property
    def key(self) -> str:
        """``<namespace>/<name>``: the Lease holder identity of this region."""
        return holder_identity(self.namespace, self.name)

    @property
    def identity(self) -> str:
        """How the group's Leases name this region when it leads: its key, prefixed with its
        cluster when the group spans clusters (``<cluster>/<namespace>/<name>``), so regions
        of the same name in two clusters are never taken for each other."""
        if self.spec.quorum is None:
            return self.key
        return f"{self.spec.quorum.cluster}/{self.key}"

    @property
    def group_key(self) -> tuple[str, str]:
        return self.namespace, self.spec.group

    @property
    def lease_name(self) -> str:
        return lease_name(self.spec.group)

    @property
    def workload_name(self) -> str:
        return f"memoria-{self.name}"

    @property
    def data_claim_name(self) -> str:
        """The PersistentVolumeClaim of the embedded store."""
        return f"memoria-{self.name}-data"

    @property
    def fenced(self) -> bool:
        return self.annotations.get(FENCED_ANNOTATION, "").lower() in ("true", "1", "yes")

    @property
    def promote_request(self) -> str | None:
        return self.annotations.get(PROMOTE_ANNOTATION) or None

    @property
    def env_control(self) -> bool:
        """True when leadership reaches the pods as ``DISABLE_SCHEDULERS`` in the Deployment
        (``spec.scheduler.control: env``) instead of through their watch of the Lease."""
        return self.spec.scheduler.control == "env"

    @property
    def may_lead(self) -> bool:
        """Eligible to hold the Lease at all (switchover, bootstrap); failover also needs
        ``spec.failover.eligible``."""
        return self.spec.scheduler.enabled and not self.fenced


def config_problems(spec: RegionSpec) -> list[tuple[str, str]]:
    """(reason, message) for choices the CRD schema cannot refuse on its own."""
    problems: list[tuple[str, str]] = []
    try:
        ZoneInfo(spec.scheduler.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(
            (
                "InvalidTimeZone",
                f"spec.scheduler.timeZone {spec.scheduler.time_zone!r}"
                " is not an IANA time zone (e.g. UTC, Europe/Paris)",
            )
        )
    if spec.role == "leader" and not spec.scheduler.enabled:
        problems.append(
            (
                "LeaderWithoutScheduler",
                "spec.role is leader but "
                "spec.scheduler.enabled is false: a leader must run the decrement",
            )
        )
    url = spec.sync.connection_url
    if url is not None:
        problem = url_scheme_problem(url, spec.sync.backend)
        if problem:
            problems.append(("ConnectionUrlMismatch", f"spec.sync.connectionUrl is {problem}"))
    return problems
