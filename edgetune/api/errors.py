"""Our exceptions as HTTP answers; the only place that maps errors to status codes."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from edgetune.errors import (
    ConflictError,
    InvalidSpecError,
    MissingDependencyError,
    NotFoundError,
    StorageError,
)

logger = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the rejected input, which cannot be rendered when it holds
        # NaN or an infinity; the field, the rule and the error type are what a client needs.
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
             "type": str(e.get("type", "value_error"))}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(InvalidSpecError)
    async def invalid_spec(_request: Request, exc: InvalidSpecError) -> JSONResponse:
        # The same shape as FastAPI's own validation errors, so clients read one format.
        loc: list[str | int] = ["body"]
        loc += [int(p) if p.isdigit() else p for p in exc.field.split(".") if p]
        detail = [{"loc": loc, "msg": exc.message, "type": "value_error"}]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(ConflictError)
    async def conflict(_request: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(MissingDependencyError)
    async def missing(_request: Request, exc: MissingDependencyError) -> JSONResponse:
        return JSONResponse(status_code=501, content={"detail": str(exc)})

    @app.exception_handler(StorageError)
    async def storage(_request: Request, exc: StorageError) -> JSONResponse:
        logger.error("storage error: %s", exc)
        return JSONResponse(
            status_code=503,
            content={"detail": "the database is unavailable; retry later"},
            headers={"Retry-After": "5"},
        )
