"""Operator-wide settings (env ``MEMORIA_OPERATOR_<FIELD>``, set by the Helm chart)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from memoria.contract import (
    API_VERSION,
    FENCED_ANNOTATION,
    GROUP,
    KIND,
    PLURAL,
    PROMOTE_ANNOTATION,
    VERSION,
)
from memoria.errors import SettingsError
from memoria.settings import describe_validation_error

from .probepolicy import ProbePolicy

__all__ = [
    "API_VERSION",
    "FENCED_ANNOTATION",
    "FIELD_MANAGER",
    "GROUP",
    "KIND",
    "PLURAL",
    "PROMOTE_ANNOTATION",
    "VERSION",
    "OperatorConfig",
    "load_config",
]

FIELD_MANAGER = "memoria-operator"


class OperatorConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMORIA_OPERATOR_", extra="ignore")

    default_image: str = Field(
        default="ghcr.io/arcafutura/memoria:0.1.0",
        description="image of regions that set no spec.image",
    )
    # the scheduler Lease of each group: how long a grant lasts, how often the operator renews
    # it while the leader is healthy, and how often it re-checks regions and retries API calls
    lease_duration_seconds: float = Field(default=10.0, gt=0, le=300)
    renew_interval_seconds: float = Field(default=2.0, gt=0, le=120)
    retry_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    health_probe_timeout_seconds: float = Field(default=1.0, gt=0, le=30)
    # level-based safety net: every region is reconciled at least this often
    resync_seconds: float = Field(default=30.0, ge=1, le=3600)
    # how old status.observedTime may get before the leadership loop rewrites it: an older
    # one tells users that no operator runs (the Seen column)
    heartbeat_seconds: float = Field(default=30.0, ge=5, le=3600)
    # health URLs beyond each region's own Service: host names, *.suffixes, CIDRs (probepolicy)
    health_url_allow: str = ""
    # the operator's own Lease (two replicas never act at once)
    leader_election: bool = True
    election_lease_name: str = "memoria-operator"
    election_namespace: str = Field(default="default", min_length=1)
    metrics_port: int = Field(default=8081, ge=0, le=65535)  # 0: no metrics endpoint
    # groups across clusters (spec.quorum): this cluster's name in them, where the peer
    # clusters' kubeconfigs are mounted (one directory per peer, named after it, holding
    # `kubeconfig`), and how far two clocks may drift apart (each grant is shortened by it)
    cluster_name: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$")
    peers_dir: str = "/etc/memoria/peers"
    max_clock_skew_seconds: float = Field(default=1.0, ge=0, le=60)

    @field_validator("health_url_allow")
    @classmethod
    def _allow(cls, value: str) -> str:
        ProbePolicy.parse(value)  # a bad entry is refused at start-up, named
        return value

    @property
    def probe_policy(self) -> ProbePolicy:
        return ProbePolicy.parse(self.health_url_allow)

    @model_validator(mode="after")
    def _timings(self) -> OperatorConfig:
        d, r, t = (
            self.lease_duration_seconds,
            self.renew_interval_seconds,
            self.retry_interval_seconds,
        )
        if not d > r > t:
            raise ValueError(
                "lease timings must satisfy duration > renew interval > retry interval, got "
                f"MEMORIA_OPERATOR_LEASE_DURATION_SECONDS={d}, "
                f"MEMORIA_OPERATOR_RENEW_INTERVAL_SECONDS={r}, "
                f"MEMORIA_OPERATOR_RETRY_INTERVAL_SECONDS={t}"
            )
        if self.cluster_name and not d - self.max_clock_skew_seconds > r:
            raise ValueError(
                "a grant across clusters lasts the Lease duration less the clock-skew bound and "
                "must outlast the renew interval, got "
                f"MEMORIA_OPERATOR_LEASE_DURATION_SECONDS={d}, "
                f"MEMORIA_OPERATOR_MAX_CLOCK_SKEW_SECONDS={self.max_clock_skew_seconds}, "
                f"MEMORIA_OPERATOR_RENEW_INTERVAL_SECONDS={r}"
            )
        return self


def load_config() -> OperatorConfig:
    from pydantic import ValidationError

    try:
        return OperatorConfig()
    except ValidationError as exc:
        text = describe_validation_error(exc, env=True).replace("MEMORIA_", "MEMORIA_OPERATOR_", 1)
        raise SettingsError(f"invalid operator settings: {text}") from None
