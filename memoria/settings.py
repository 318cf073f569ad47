"""Runtime settings: one pydantic-settings model read from the environment.

The names are the guide's contract: ``MEMORIA_SYNC__*`` for the sync block,
``MEMORIA_DATABASE__CONNECTION_STRING`` (alias ``MEMORIA_DATABASE_URL``) for the store,
``DECREMENT_TZ``, ``DISABLE_SCHEDULERS`` and ``MEMORIA_API_KEY``. Privacy values outside -15..15
coming from the environment are ignored with a warning, as the guide says; the HTTP settings API
is stricter and refuses them (see :func:`apply_updates`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .contract import STORE_URL_SCHEMES, SYNC_URL_SCHEMES
from .errors import SettingsError

log = logging.getLogger(__name__)

PRIVACY_MIN, PRIVACY_MAX = -15, 15
_TABLE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*$")
_CHANNEL_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,63}$")


class SyncBackendName(StrEnum):
    MEMORY = "memory"  # in-process bus: the embedded default, for one process
    REDIS = "redis"
    POSTGRES = "postgres"


class ReplicaPromotion(StrEnum):
    """What a region does when its broker is a read-only replica whose primary is gone."""

    LEADER = "leader"  # the region holding the scheduler Lease promotes it (REPLICAOF NO ONE)
    NEVER = "never"  # nobody does: events wait in the outbox until someone promotes it


#: the channel when ``MEMORIA_SYNC__CHANNEL`` is not set: the guide's name for each backend
#: (``memoria-sync`` is not a PostgreSQL identifier, hence ``memoria_sync`` there)
DEFAULT_CHANNELS = {
    SyncBackendName.MEMORY: "memoria-sync",
    SyncBackendName.REDIS: "memoria-sync",
    SyncBackendName.POSTGRES: "memoria_sync",
}


class SyncSettings(BaseModel):
    """The ``sync`` block (env ``MEMORIA_SYNC__<FIELD>``, PATCH key ``sync.<field>``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = False
    backend: SyncBackendName = SyncBackendName.MEMORY
    connection_url: SecretStr | None = None
    # unset: the backend's default (DEFAULT_CHANNELS), which follows a later change of backend
    channel: str = ""
    table: str | None = None
    privacy_floor: int = PRIVACY_MIN
    privacy_ceiling: int = PRIVACY_MAX
    realtime_replication: bool = True
    # Redis only: a replica cut off from its primary is promoted by the leading region
    replica_promotion: ReplicaPromotion = ReplicaPromotion.LEADER
    # the namespaces exchanged with peers (both ways); empty: all of them
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # the group's HMAC key (MEMORIA_SYNC__SIGNING_KEY, from a Secret): events we publish are
    # signed with it; "signed" trust takes only events that verify, "open" also unsigned ones
    signing_key: SecretStr | None = None
    trust: Literal["open", "signed"] = "open"

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        # only values given are checked: "" here was given (unset is the default, unchecked)
        if not _CHANNEL_RE.match(value):
            raise ValueError("must be 1-63 characters of letters, digits, '_', '.', ':' or '-'")
        return value

    @field_validator("namespaces", mode="before")
    @classmethod
    def _namespaces(cls, value: Any) -> Any:
        # the environment may say MEMORIA_SYNC__NAMESPACES=a,b as well as ["a", "b"]
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("connection_url")
    @classmethod
    def _url_fits_backend(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        backend = info.data.get("backend")
        url = value.get_secret_value() if value else ""
        schemes = (
            SYNC_URL_SCHEMES.get(backend.value) if isinstance(backend, SyncBackendName) else None
        )
        if url and schemes and not url.startswith(schemes):
            raise ValueError(
                f"must be a {backend.value} URL starting with {' or '.join(schemes)}"  # type: ignore[union-attr]
            )
        return value

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not _TABLE_RE.match(value):
            raise ValueError("must be an identifier, optionally schema-qualified: schema.table")
        return value

    @field_validator("privacy_floor", "privacy_ceiling")
    @classmethod
    def _privacy_in_range(cls, value: int) -> int:
        if not PRIVACY_MIN <= value <= PRIVACY_MAX:
            raise ValueError(f"must be between {PRIVACY_MIN} and {PRIVACY_MAX}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SyncSettings:
        if self.privacy_floor > self.privacy_ceiling:
            raise ValueError(
                f"privacy_floor ({self.privacy_floor}) must not exceed "
                f"privacy_ceiling ({self.privacy_ceiling})"
            )
        if self.enabled and self.backend is not SyncBackendName.MEMORY and not self.connection_url:
            raise ValueError(f"connection_url is required with backend {self.backend.value}")
        if self.trust == "signed" and not self.signing_key:
            raise ValueError("trust 'signed' needs a signing_key (MEMORIA_SYNC__SIGNING_KEY)")
        if self.table and self.backend is not SyncBackendName.POSTGRES:
            raise ValueError("table is only used with backend postgres")
        if not self.channel:
            # not a field assignment: the channel stays "unset" (model_fields_set), so a later
            # change of backend through PATCH /settings brings that backend's default
            self.__dict__["channel"] = DEFAULT_CHANNELS[self.backend]
        return self

    @property
    def connection(self) -> str:
        return self.connection_url.get_secret_value() if self.connection_url else ""

    @property
    def key(self) -> bytes | None:
        return self.signing_key.get_secret_value().encode() if self.signing_key else None

    def shares_namespace(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces


class DatabaseSettings(BaseModel):
    """The memory store (env ``MEMORIA_DATABASE__CONNECTION_STRING``)."""

    model_config = ConfigDict(extra="forbid")

    connection_string: SecretStr = SecretStr("sqlite:///memoria.db")

    @field_validator("connection_string")
    @classmethod
    def _scheme(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith(STORE_URL_SCHEMES):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


class LeadershipSettings(BaseModel):
    """Where this region reads its scheduler Lease (env ``MEMORIA_LEADERSHIP__<FIELD>``).

    With ``lease_name`` unset the region runs standalone: its scheduler runs unless disabled.
    """

    model_config = ConfigDict(extra="forbid")

    lease_name: str | None = None
    lease_namespace: str = "default"
    # <namespace>/<name> of this region's MemoriaRegion: the Lease holder identity and the object
    # POST /admin/promote marks; <cluster>/<namespace>/<name> in a group across clusters
    identity: str | None = None
    kubeconfig: str | None = None  # default: in-cluster credentials, then $KUBECONFIG

    @field_validator("identity")
    @classmethod
    def _identity(cls, value: str | None) -> str | None:
        if value is not None and (value.count("/") not in (1, 2) or "" in value.split("/")):
            raise ValueError(
                "must be <namespace>/<name> of this region's MemoriaRegion "
                "(<cluster>/<namespace>/<name> in a group across clusters)"
            )
        return value


MAX_CLOCK_OFFSET_SECONDS = 100 * 365 * 86400  # a century either way is plenty for any drill


class SchedulerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Seconds added to the wall clock when deciding which day it is. Only for drills and tests
    # that need midnight to come soon; leave at 0 in production.
    clock_offset_seconds: float = Field(
        default=0.0, ge=-MAX_CLOCK_OFFSET_SECONDS, le=MAX_CLOCK_OFFSET_SECONDS
    )
    # how many missed days a start-up catches up at most
    max_catch_up_days: int = Field(default=31, ge=0, le=366)


class MemoriaSettings(BaseSettings):
    """All runtime settings. Read from the environment by :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="MEMORIA_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_assignment=True,
    )

    region: str = Field(default="local", min_length=1, max_length=63)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    leadership: LeadershipSettings = Field(default_factory=LeadershipSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    decrement_tz: str = Field(default="UTC", validation_alias=AliasChoices("DECREMENT_TZ"))
    disable_schedulers: bool = Field(
        default=False, validation_alias=AliasChoices("DISABLE_SCHEDULERS")
    )
    api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MEMORIA_API_KEY")
    )
    # the largest request body the HTTP API reads (checked before parsing; 413 above it)
    max_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        le=64 << 20,
        validation_alias=AliasChoices("MEMORIA_MAX_BODY_BYTES"),
    )

    @field_validator("api_key")
    @classmethod
    def _api_key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # an empty key used to switch authentication off while /settings said it was required
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(
                "is set but empty; unset MEMORIA_API_KEY to run without a key, or set a key"
            )
        return value

    @field_validator("decrement_tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        # OSError: a name the file system refuses before any lookup (too long, say)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as UTC)") from exc
        return value

    @model_validator(mode="before")
    @classmethod
    def _database_alias(cls, data: Any) -> Any:
        # MEMORIA_DATABASE_URL is the older name of MEMORIA_DATABASE__CONNECTION_STRING
        if isinstance(data, dict):
            alias = os.environ.get("MEMORIA_DATABASE_URL")
            database = data.get("database")
            has_primary = isinstance(database, dict) and "connection_string" in database
            if alias and not has_primary:
                data = {**data, "database": {**(database or {}), "connection_string": alias}}
        return data

    @property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.decrement_tz)

    @property
    def privacy_range(self) -> tuple[int, int]:
        return self.sync.privacy_floor, self.sync.privacy_ceiling


# Map a pydantic location such as ("sync", "privacy_floor") to the variable a user sets.
def _env_name(loc: tuple[int | str, ...]) -> str:
    if loc and loc[0] in ("decrement_tz", "DECREMENT_TZ"):
        return "DECREMENT_TZ"
    if loc and loc[0] in ("disable_schedulers", "DISABLE_SCHEDULERS"):
        return "DISABLE_SCHEDULERS"
    if loc and loc[0] in ("api_key", "MEMORIA_API_KEY"):
        return "MEMORIA_API_KEY"
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return "MEMORIA_" + "__".join(p.upper() for p in parts)


def _drop_out_of_range_privacy() -> None:
    """The guide's rule: privacy values outside -15..15 from the environment are ignored."""
    for name in ("MEMORIA_SYNC__PRIVACY_FLOOR", "MEMORIA_SYNC__PRIVACY_CEILING"):
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            value = int(raw.strip())
        except ValueError:
            continue  # not a number: the validator reports it, naming the variable
        if not PRIVACY_MIN <= value <= PRIVACY_MAX:
            log.warning(
                "ignoring %s=%s: privacy values must be between %d and %d; using the default",
                name,
                raw,
                PRIVACY_MIN,
                PRIVACY_MAX,
            )
            os.environ.pop(name)


def describe_validation_error(exc: ValidationError, *, env: bool) -> str:
    """One line per problem, naming the variable (env) or the dotted key (API)."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        name = _env_name(loc) if env else ".".join(str(p) for p in loc)
        if not loc and err["type"] == "value_error":
            name = "MEMORIA_SYNC" if env else "sync"
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "; ".join(lines)


def load_settings(**overrides: Any) -> MemoriaSettings:
    """Read the environment; raise :class:`SettingsError` naming each bad variable."""
    _drop_out_of_range_privacy()
    try:
        return MemoriaSettings(**overrides)
    except ValidationError as exc:
        raise SettingsError(
            f"invalid settings: {describe_validation_error(exc, env=True)}"
        ) from None


# -- the settings API ------------------------------------------------------------------------

#: keys accepted by PATCH /settings, with the section they live in
UPDATABLE_KEYS: dict[str, tuple[str, str]] = {
    **{f"sync.{name}": ("sync", name) for name in SyncSettings.model_fields},
    "decrement_tz": ("", "decrement_tz"),
    "disable_schedulers": ("", "disable_schedulers"),
    # drills and test beds move a region's scheduler clock without a restart
    "scheduler.clock_offset_seconds": ("scheduler", "clock_offset_seconds"),
}


class SettingsUpdateError(SettingsError):
    """A PATCH /settings body was refused; ``problems`` maps each key to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))


def apply_updates(current: MemoriaSettings, updates: dict[str, Any]) -> MemoriaSettings:
    """Validate every dotted key before applying any; return a new settings object.

    Strict where the environment is lenient: an out-of-range privacy value is an error here,
    since a caller can be told, and silently keeping the old value would surprise them. Types
    are JSON-strict too: ``"5"`` is not an integer and ``"yes"`` is not a boolean.
    """
    allowed = ", ".join(sorted(UPDATABLE_KEYS))
    problems = {
        key: f"unknown setting; allowed keys: {allowed}"
        for key in updates
        if key not in UPDATABLE_KEYS
    }
    # fields never set stay unset (the channel then follows the backend)
    sync = current.sync.model_dump(mode="json", exclude_unset=True)
    sync["connection_url"] = current.sync.connection or None
    if current.sync.signing_key is not None:  # the dump above masks secrets
        sync["signing_key"] = current.sync.signing_key.get_secret_value()
    top: dict[str, Any] = {}
    scheduler: dict[str, Any] = {}
    for key, value in updates.items():
        if key in UPDATABLE_KEYS:  # unknown keys are reported with the rest, not applied
            section, name = UPDATABLE_KEYS[key]
            {"sync": sync, "scheduler": scheduler}.get(section, top)[name] = value

    new_sync = current.sync
    try:
        new_sync = SyncSettings.model_validate_json(json.dumps(sync), strict=True)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = f"sync.{loc[0]}" if loc else _sync_key_for(str(err["msg"]), updates)
            problems[key] = str(err["msg"]).removeprefix("Value error, ")
    if "decrement_tz" in top:
        try:
            if not isinstance(top["decrement_tz"], str):
                raise ValueError("must be a string holding an IANA time zone name")
            MemoriaSettings._zone(top["decrement_tz"])
        except ValueError as exc:
            problems["decrement_tz"] = str(exc)
    if "disable_schedulers" in top and not isinstance(top["disable_schedulers"], bool):
        problems["disable_schedulers"] = "must be a boolean"
    offset = scheduler.get("clock_offset_seconds", 0.0)
    if (
        isinstance(offset, bool)
        or not isinstance(offset, int | float)
        or not math.isfinite(offset)
        or abs(offset) > MAX_CLOCK_OFFSET_SECONDS
    ):
        problems["scheduler.clock_offset_seconds"] = (
            f"must be a number of seconds from -{MAX_CLOCK_OFFSET_SECONDS} to "
            f"{MAX_CLOCK_OFFSET_SECONDS}"
        )
    if problems:
        raise SettingsUpdateError(problems)
    if scheduler:
        top["scheduler"] = current.scheduler.model_copy(update=scheduler)
    return current.model_copy(update={"sync": new_sync, **top})


def _sync_key_for(message: str, updates: dict[str, Any]) -> str:
    """Name the key behind a cross-field error: one the message names, preferably one sent."""
    named = [
        f"sync.{field}"
        for field in ("privacy_floor", "privacy_ceiling", "connection_url", "table")
        if field in message
    ]
    sent = [key for key in named if key in updates]
    if sent or named:
        return (sent or named)[0]
    return next((k for k in updates if k.startswith("sync.")), "sync")


def public_view(settings: MemoriaSettings) -> dict[str, Any]:
    """Settings as GET /settings shows them: secrets masked, never echoed."""
    sync = settings.sync.model_dump(mode="json")
    sync["connection_url"] = (
        mask_url(settings.sync.connection) if settings.sync.connection else None
    )
    return {
        "region": settings.region,
        "sync": sync,
        "database": {
            "connection_string": mask_url(settings.database.connection_string.get_secret_value())
        },
        "decrement_tz": settings.decrement_tz,
        "disable_schedulers": settings.disable_schedulers,
        "leadership": settings.leadership.model_dump(mode="json"),
        "api_key_required": settings.api_key is not None,
    }


def mask_url(url: str) -> str:
    """Any text with the password of every URL in it replaced by ``***`` (for logs, errors,
    /healthz and GET /settings). The password runs to the LAST ``@`` before the host: an
    unencoded ``@``, a ``/`` or a stray ``%`` in it must not leave part of it visible."""
    masked = re.sub(r"(://[^/:@\s]*:)\S*@", r"\1***@", url)  # over-masks rather than leaks
    return re.sub(r"([?&]password=)[^&\s]*", r"\1***", masked)
