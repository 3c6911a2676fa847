"""``/healthz`` (the process lives), ``/readyz`` (send traffic here), ``/metrics``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import __version__
from app.errors import BrokerError
from app.server.routes.common import relay_of

router = APIRouter()


@router.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok", "version": __version__})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    relay = relay_of(request)
    if relay.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    try:
        await asyncio.wait_for(relay.broker.ping(), relay.settings.redis_timeout)
    except (BrokerError, TimeoutError) as exc:
        return JSONResponse(
            {"status": "unavailable", "detail": str(exc) or "Redis timed out"}, status_code=503
        )
    return JSONResponse({"status": "ready", "instance": relay.settings.instance_name})


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
