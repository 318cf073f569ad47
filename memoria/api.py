"""The region's HTTP API (FastAPI: the OpenAPI document is served at /openapi.json).

Endpoints: memories (create, read, list, update, delete), ``GET/PATCH /settings`` (live, validated
all-or-nothing), ``POST /admin/promote``, ``POST /admin/decrement``, ``GET /healthz`` and
``GET /metrics``. ``X-API-Key`` is required on ``/settings`` and ``/admin/*`` when
``MEMORIA_API_KEY`` is set.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from .errors import BrokerBusy, LeadershipError, MemoryNotFound, NotConfigured, SyncError
from .httpmetrics import RequestMetrics
from .leadership import request_promotion
from .limits import BodyLimit, capped_problems
from .runtime import Runtime
from .settings import (
    MAX_CLOCK_OFFSET_SECONDS,
    MemoriaSettings,
    SettingsUpdateError,
    mask_url,
    public_view,
)
from .store import Memory

log = logging.getLogger("memoria.api")

Privacy = Annotated[float, Field(ge=-15, le=15, description="privacy (Y axis), -15..15")]


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class MemoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    _text_ok = field_validator("text", "namespace")(_no_nul)

    text: str = Field(min_length=1, max_length=100_000)
    y_coord: Privacy
    x_coord: float = Field(default=0.0, allow_inf_nan=False, description="temporal axis")
    z_coord: float = Field(default=0.0, allow_inf_nan=False)
    namespace: str = Field(default="default", min_length=1, max_length=200)


class MemoryPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    _text_ok = field_validator("text", "namespace")(_no_nul)

    text: str | None = Field(default=None, min_length=1, max_length=100_000)
    y_coord: Privacy | None = None
    x_coord: float | None = Field(default=None, allow_inf_nan=False)
    z_coord: float | None = Field(default=None, allow_inf_nan=False)
    namespace: str | None = Field(default=None, min_length=1, max_length=200)


class DecrementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    date: dt.date | None = Field(default=None, description="default: today in DECREMENT_TZ")


def _out(memory: Memory) -> dict[str, Any]:
    return memory.to_payload()


def create_app(settings: MemoriaSettings, *, disable_schedulers: bool = False) -> FastAPI:
    runtime = Runtime(settings, disable_schedulers=disable_schedulers)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(runtime.start)
        try:
            yield
        finally:
            # uvicorn has finished the in-flight requests by now (graceful shutdown)
            await run_in_threadpool(runtime.stop)

    app = FastAPI(
        title="Memoria region API",
        version="0.1.0",
        lifespan=lifespan,
        description="One region of a multi-region Memoria deployment.",
    )
    app.state.runtime = runtime
    app.add_middleware(BodyLimit, limit=runtime.settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=runtime.metrics)  # outermost: sees every answer

    def api_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        expected = runtime.settings.api_key
        if expected is None:
            return
        given = (x_api_key or "").encode()
        if not hmac.compare_digest(given, expected.get_secret_value().encode()):
            raise HTTPException(401, "missing or wrong X-API-Key", {"WWW-Authenticate": "ApiKey"})

    protected = [Depends(api_key)]
    _error_handlers(app)
    _memory_routes(app, runtime)
    _settings_routes(app, runtime, protected)
    _admin_routes(app, runtime, protected)
    return app


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors) or not await _is_json(request):
            return JSONResponse({"detail": "request body is not valid JSON"}, status_code=400)
        problems = {
            ".".join(str(p) for p in e["loc"] if p != "body") or "body": e["msg"] for e in errors
        }
        return JSONResponse({"detail": capped_problems(problems)}, status_code=422)


async def _is_json(request: Request) -> bool:
    """False when a body was sent that is not JSON at all (whatever its content type said)."""
    raw = await request.body()
    if not raw:
        return True  # no body: a validation problem, not a syntax one
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def _memory_routes(app: FastAPI, runtime: Runtime) -> None:
    @app.post("/memories", status_code=201, response_model=Memory)
    def create_memory(body: MemoryIn) -> dict[str, Any]:
        return _out(runtime.writes.create_memory(**body.model_dump()))

    @app.get("/memories/{memory_id}", response_model=Memory)
    def get_memory(memory_id: str) -> dict[str, Any]:
        try:
            return _out(runtime.store.get_memory(memory_id))
        except MemoryNotFound:
            raise HTTPException(404, f"no memory with id {memory_id}") from None

    @app.get("/memories")
    def list_memories(
        namespace: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    ) -> dict[str, Any]:
        items = runtime.store.list_memories(namespace, limit, offset)
        return {"items": [_out(m) for m in items], "count": len(items)}

    @app.patch("/memories/{memory_id}", response_model=Memory)
    def update_memory(memory_id: str, body: MemoryPatch) -> dict[str, Any]:
        changes = body.model_dump(exclude_none=True)
        if not changes:
            raise HTTPException(422, {"body": "nothing to change"})
        try:
            return _out(runtime.writes.update_memory(memory_id, changes))
        except MemoryNotFound:
            raise HTTPException(404, f"no memory with id {memory_id}") from None

    @app.delete("/memories/{memory_id}", status_code=204)
    def delete_memory(memory_id: str) -> Response:
        try:
            runtime.writes.delete_memory(memory_id)
        except MemoryNotFound:
            raise HTTPException(404, f"no memory with id {memory_id}") from None
        return Response(status_code=204)


# PATCH /settings reads its body itself (to answer per key); this documents it
_SETTINGS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "properties": {
                        "sync.enabled": {"type": "boolean"},
                        "sync.backend": {"type": "string", "enum": ["memory", "redis", "postgres"]},
                        "sync.connection_url": {"type": ["string", "null"]},
                        "sync.channel": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,63}$"},
                        "sync.table": {"type": ["string", "null"]},
                        "sync.privacy_floor": {"type": "integer", "minimum": -15, "maximum": 15},
                        "sync.privacy_ceiling": {"type": "integer", "minimum": -15, "maximum": 15},
                        "sync.realtime_replication": {"type": "boolean"},
                        "sync.namespaces": {"type": "array", "items": {"type": "string"}},
                        "decrement_tz": {"type": "string"},
                        "disable_schedulers": {"type": "boolean"},
                        "scheduler.clock_offset_seconds": {
                            "type": "number",
                            "minimum": -MAX_CLOCK_OFFSET_SECONDS,
                            "maximum": MAX_CLOCK_OFFSET_SECONDS,
                        },
                    },
                }
            }
        },
    }
}


def _settings_routes(app: FastAPI, runtime: Runtime, protected: list[Any]) -> None:
    @app.get("/settings", dependencies=protected)
    def get_settings() -> dict[str, Any]:
        return public_view(runtime.settings)

    @app.patch("/settings", dependencies=protected, openapi_extra=_SETTINGS_BODY)
    async def patch_settings(request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            updates = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return JSONResponse({"detail": "request body is not valid JSON"}, status_code=400)
        if not isinstance(updates, dict) or not updates:
            return JSONResponse(
                {
                    "detail": {
                        "body": "expected a non-empty JSON object of dotted keys, e.g. "
                        '{"sync.privacy_floor": 0}'
                    }
                },
                status_code=422,
            )
        try:
            await run_in_threadpool(runtime.update_settings, updates)
        except SettingsUpdateError as exc:
            return JSONResponse({"detail": exc.problems}, status_code=422)
        except BrokerBusy as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503)
        except (SyncError, ValueError) as exc:
            # the new backend could not even be built from these settings: nothing changed
            return JSONResponse(
                {"detail": {"sync.connection_url": mask_url(str(exc))}}, status_code=422
            )
        return JSONResponse(public_view(runtime.settings))


def _admin_routes(app: FastAPI, runtime: Runtime, protected: list[Any]) -> None:
    @app.post("/admin/promote", status_code=202, dependencies=protected)
    def promote() -> dict[str, Any]:
        try:
            value = request_promotion(runtime.settings.leadership)
        except NotConfigured as exc:
            status = 409 if "IDENTITY" in str(exc) else 503
            raise HTTPException(status, str(exc)) from None
        except LeadershipError as exc:
            raise HTTPException(503, str(exc)) from None
        return {
            "requested": value,
            "region": runtime.settings.leadership.identity,
            "detail": "promotion requested; the operator moves the Lease and this region's "
            "scheduler starts once it holds it",
        }

    @app.post("/admin/decrement", dependencies=protected)
    def decrement_now(body: DecrementIn | None = None) -> dict[str, Any]:
        scheduler = runtime.scheduler
        if not scheduler.leadership.leading:
            raise HTTPException(
                409,
                f"this region does not lead (holder: "
                f"{scheduler.leadership.holder}); only the leader decrements",
            )
        if scheduler.disabled:
            raise HTTPException(409, "schedulers are disabled in this region")
        today = scheduler.today()
        day = body.date if body and body.date else today
        if day > today:
            # a future date would be claimed now and block every real date until then
            raise HTTPException(
                422,
                {
                    "date": f"must not be after today ({today.isoformat()}) "
                    f"in {runtime.settings.decrement_tz}"
                },
            )
        outcome = scheduler.run_date(day.isoformat())
        return {
            "date": outcome.date,
            "ran": outcome.ran,
            "reason": outcome.reason,
            "rows": outcome.rows,
            "last_by": outcome.last_by,
        }

    @app.get("/healthz")
    def healthz(x_api_key: Annotated[str | None, Header()] = None) -> JSONResponse:
        report = runtime.health()
        code = 503 if report["status"] == "down" else 200
        expected = runtime.settings.api_key
        if expected is not None and not hmac.compare_digest(
            (x_api_key or "").encode(), expected.get_secret_value().encode()
        ):
            # probes and load balancers need no key; they get the facts, not the details
            # (error texts, URLs, store paths are for callers with the key)
            return JSONResponse(public_health(report), status_code=code)
        return JSONResponse(report, status_code=code)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type="text/plain; version=0.0.4")


def _runtime(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def cancel_daily_decrement_timer(app: FastAPI) -> None:
    """Disarm this app's decrement timer (the guide's call for standby regions)."""
    _runtime(app).scheduler.cancel()


def restart_daily_decrement_schedule(app: FastAPI) -> None:
    """Re-arm this app's decrement timer and catch up missed dates (the guide's failover call).

    Works on an app that is not serving too (the guide's one-off script): the scheduler thread
    is started if needed; it still decrements only where this region is allowed to lead.
    """
    _runtime(app).scheduler.restart()


def public_health(report: dict[str, Any]) -> dict[str, Any]:
    """What /healthz tells a caller without the API key: states and flags, no free text."""
    sync = report.get("sync") or {}
    scheduler = report.get("scheduler") or {}
    leadership = report.get("leadership") or {}
    return {
        "status": report.get("status"),
        "region": report.get("region"),
        "store": {"state": (report.get("store") or {}).get("state")},
        "sync": {
            "state": sync.get("state"),
            "outbox_depth": sync.get("outbox_depth"),
            "listener_connected": sync.get("listener_connected"),
            "listener_reconnects": sync.get("listener_reconnects"),
        },
        # what the operator reads to order a handover and to judge a region that cannot lead
        "scheduler": {"leading": scheduler.get("leading"), "armed": scheduler.get("armed")},
        "leadership": {
            "lease": leadership.get("lease"),
            "held": leadership.get("held"),
            "watch_connected": leadership.get("watch_connected"),
            "seconds_disconnected": leadership.get("seconds_disconnected"),
        },
        # which date the store last decremented and which region ran it: names, no free text
        "decrement": {
            k: v for k, v in (report.get("decrement") or {}).items() if k in ("date", "by", "at")
        },
    }
