"""The app factory and its lifespan: the relay's parts are built when the app starts and closed when
it stops. ``app.main`` serves one built from the environment (``uvicorn app.main:app``);
``relay serve`` (:mod:`app.server.serve`) adds the graceful drain on SIGTERM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from app import __version__, logs
from app.protocol.codes import ErrorCode
from app.server import sockets
from app.server.lifecycle import Relay
from app.server.routes import browser, channels, events, health
from app.server.routes.common import error_response
from app.settings import Settings


class RelayApp(FastAPI):
    """FastAPI, with the relay's WebSocket endpoints (:mod:`app.server.sockets`) and event streams
    (:mod:`app.server.routes.events`) dispatched ahead of it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            found = sockets.match(scope)
            if found is not None:
                endpoint, channel = found
                scope["app"] = self
                await endpoint(WebSocket(scope, receive, send), channel)
                return
        elif scope["type"] == "http":
            streamed = events.match(scope)
            if streamed is not None:
                scope["app"] = self
                await events.serve(scope, receive, send, streamed)
                return
        await super().__call__(scope, receive, send)


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

    app = RelayApp(title="relay", version=__version__, lifespan=lifespan)
    for module in (channels, health, browser):
        app.include_router(module.router)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    return app


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return error_response(400, ErrorCode.INVALID_REQUEST, detail)
