"""The app factory and its lifespan. ``uvicorn app.main:app`` serves ``app`` (built on first
access, from the environment); ``relay serve`` (``app.server``) adds the graceful drain on SIGTERM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from app import __version__, logs
from app.lifecycle import Relay
from app.protocol import ErrorCode
from app.routes import channels, consumer, health, producer
from app.routes.common import error_response
from app.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logs.install()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        relay = Relay(settings)
        app.state.relay = relay
        await relay.start()
        try:
            yield
        finally:
            await relay.stop()

    app = FastAPI(title="relay", version=__version__, lifespan=lifespan)
    for module in (producer, consumer, channels, health):
        app.include_router(module.router)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    return app


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return error_response(400, ErrorCode.INVALID_REQUEST, detail)


def __getattr__(name: str) -> FastAPI:
    """``app.main:app`` is built on first access, so that importing this module reads no settings."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = create_app()
    globals()["app"] = built
    return built
