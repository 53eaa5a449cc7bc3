"""Our exceptions as HTTP answers; the only place that maps errors to status codes."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import DataError

from edgetune.errors import (
    AuthenticationError,
    ConflictError,
    InvalidSpecError,
    MissingDependencyError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
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

    @app.exception_handler(AuthenticationError)
    async def unauthenticated(_request: Request, exc: AuthenticationError) -> JSONResponse:
        return JSONResponse(status_code=401, content={"detail": str(exc)},
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(PermissionDeniedError)
    async def forbidden(_request: Request, exc: PermissionDeniedError) -> JSONResponse:
        return JSONResponse(status_code=403, content={"detail": str(exc)})

    @app.exception_handler(RateLimitedError)
    async def rate_limited(_request: Request, exc: RateLimitedError) -> JSONResponse:
        return JSONResponse(status_code=429, content={"detail": str(exc)},
                            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(ConflictError)
    async def conflict(_request: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(MissingDependencyError)
    async def missing(_request: Request, exc: MissingDependencyError) -> JSONResponse:
        return JSONResponse(status_code=501, content={"detail": str(exc)})

    @app.exception_handler(DataError)
    async def invalid_data(_request: Request, exc: DataError) -> JSONResponse:
        return _unstorable(exc)

    @app.exception_handler(StorageInternalError)
    async def optuna_storage(_request: Request, exc: StorageInternalError) -> JSONResponse:
        # Optuna wraps every database error of its storage in this one.
        if (refused := _data_error(exc)) is not None:
            return _unstorable(refused)
        return _unavailable(f"optuna storage error: {exc.__cause__ or exc}")

    @app.exception_handler(StorageError)
    async def storage(_request: Request, exc: StorageError) -> JSONResponse:
        # The database refusing a value (bad text, a number out of range) is the request's
        # fault, not an outage: 422, which clients do not retry. 503 is for the rest.
        if (refused := _data_error(exc)) is not None:
            return _unstorable(refused)
        return _unavailable(f"storage error: {exc}")


def _data_error(exc: BaseException) -> DataError | None:
    """The database's refusal of a value behind `exc`, through every wrapping (ours of
    Optuna's of the driver's), or None."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, DataError):
            return cause
        cause = cause.__cause__
    return None


def _unavailable(cause: str) -> JSONResponse:
    logger.error("%s", cause)
    return JSONResponse(
        status_code=503,
        content={"detail": "the database is unavailable; retry later"},
        headers={"Retry-After": "5"},
    )


def _unstorable(exc: DataError) -> JSONResponse:
    logger.info("the database refused a value of a request: %s", exc.orig)
    detail = [{"loc": ["request"], "msg": "a value of the request cannot be stored (invalid text "
               "or a number out of range)", "type": "value_error"}]
    return JSONResponse(status_code=422, content={"detail": detail})
