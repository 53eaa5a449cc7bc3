"""The FastAPI application: routers under `/api/v1`, error mapping, the database lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from edgetune import __version__
from edgetune.api.errors import install_error_handlers
from edgetune.api.routes import health, jobs
from edgetune.search.front import FrontView
from edgetune.settings import Settings
from edgetune.storage import open_database

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.db = open_database(settings.url)
        app.state.front = FrontView(app.state.db)
        yield
        app.state.db.dispose()

    app = FastAPI(
        title="edgetune",
        version=__version__,
        summary="Multi-objective search for models that ship to real hardware.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)

    @app.middleware("http")
    async def cap_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # Refuse an oversized body from its declared length, before any of it is read.
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return JSONResponse(
                status_code=413,
                content={"detail": f"request body over {settings.max_body_bytes} bytes"},
            )
        return await call_next(request)

    api = APIRouter(prefix=API_PREFIX)
    api.include_router(health.router)
    api.include_router(jobs.router)
    app.include_router(api)
    return app
