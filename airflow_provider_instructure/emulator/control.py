"""HTTP control routes under ``/_emulator`` for processes that cannot reach the Python object.

They carry no authentication: the emulator binds 127.0.0.1 and holds only generated data.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from airflow_provider_instructure.emulator.encoders import format_timestamp

if TYPE_CHECKING:
    from airflow_provider_instructure.emulator.core import Emulator


def control_router(emulator: Emulator) -> APIRouter:
    router = APIRouter(prefix="/_emulator")

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw:
            return {}
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data

    def bad(exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 400)

    @router.get("/stats")
    async def stats() -> JSONResponse:
        return JSONResponse(
            {
                "calls": emulator.stats.snapshot(),
                "jobs_created": emulator.jobs.created_count,
                # 429 answers of the rate limits per route (injected 429 faults not included).
                "rate_limited": emulator.limiter.rejected_counts(),
            }
        )

    @router.get("/config")
    async def get_config() -> JSONResponse:
        return JSONResponse(emulator.config.as_dict())

    @router.patch("/config")
    async def patch_config(request: Request) -> JSONResponse:
        try:
            values = await body(request)
            served = {f"{ns}.{t}" for ns, tables in emulator.dataset.tables.items() for t in tables}
            unknown = sorted(set((values or {}).get("tables_without_data") or {}) - served)
            if unknown:  # a typo would otherwise silently switch nothing
                raise ValueError(f"tables_without_data names tables the emulator does not serve: {unknown}")
            emulator.config.update(values)
        except (ValueError, TypeError, AttributeError) as exc:
            return bad(exc)
        return JSONResponse(emulator.config.as_dict())

    @router.post("/rate-limits")
    async def rate_limits(request: Request) -> JSONResponse:
        data = await body(request)
        if data.get("enabled", True):
            emulator.config.enable_rate_limits(float(data.get("scale", 1.0)))
        else:
            emulator.config.rate_limits = {}
        return JSONResponse({"rate_limits": emulator.config.rate_limits})

    @router.post("/quirks")
    async def quirks(request: Request) -> JSONResponse:
        """Body: ``{"timestamp_after_9999": 0.2, "empty_typed": 0.1}`` replaces the value quirks
        (``{}`` turns them off); see :mod:`.quirks`. They apply to jobs created afterwards."""
        try:
            emulator.config.update({"quirks": await body(request)})
        except (ValueError, TypeError) as exc:
            return bad(exc)
        return JSONResponse({"quirks": emulator.config.quirks})

    @router.post("/faults")
    async def faults(request: Request) -> JSONResponse:
        """Body: ``{"route": "get_job", "kind": "500", "count": 2, ...params}``."""
        try:
            data = await body(request)
            emulator.faults.inject(data.pop("route"), str(data.pop("kind")), int(data.pop("count", 1)), **data)
        except (KeyError, ValueError) as exc:
            return bad(exc)
        return JSONResponse({"pending": emulator.faults.pending()})

    @router.post("/advance")
    async def advance(request: Request) -> JSONResponse:
        """Body: ``{"tables": ["canvas.users"], "updates": 0.1, "inserts": 5, "deletes": 2, "step_seconds": 60}``."""
        try:
            data = await body(request)
            step = timedelta(seconds=float(data.pop("step_seconds", 60)))
            ts = emulator.advance(data.pop("tables", None), step=step, **data)
        except (KeyError, ValueError, TypeError) as exc:
            return bad(exc)
        return JSONResponse({"ts": format_timestamp(ts)})

    @router.post("/schema-change")
    async def schema_change(request: Request) -> JSONResponse:
        """Body: ``{"table": "canvas.users", "column": "nickname"}``: adds a nullable column."""
        try:
            data = await body(request)
            version = emulator.add_column(data["table"], data.get("column", "emulator_added_note"), data.get("schema"))
        except (KeyError, ValueError) as exc:
            return bad(exc)
        return JSONResponse({"version": version})

    @router.post("/reload")
    async def reload(request: Request) -> JSONResponse:
        try:
            ts = emulator.reload((await body(request))["table"])
        except (KeyError, ValueError) as exc:
            return bad(exc)
        return JSONResponse({"ts": format_timestamp(ts)})

    @router.post("/revoke-tokens")
    async def revoke() -> JSONResponse:
        return JSONResponse({"revoked": emulator.revoke_tokens()})

    @router.post("/reset")
    async def reset() -> JSONResponse:
        emulator.reset()
        return JSONResponse({"ok": True})

    return router
