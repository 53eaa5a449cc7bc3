"""The FastAPI application: routers under `/api/v1`, error mapping, the database lifecycle."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgetune import __version__
from edgetune.api.auth import Authenticator, install_tokens
from edgetune.api.errors import install_error_handlers
from edgetune.api.graph_reader import GraphReader
from edgetune.api.invalid_text import RefuseInvalidText
from edgetune.api.routes import artifacts, ask_tell, devices, health, jobs, probes, tokens
from edgetune.devices.predictor import PredictorCache
from edgetune.schemas import ErrorPublic
from edgetune.search.ask_tell import AskTellStudies
from edgetune.search.events import JobEventHub, JobEventStream
from edgetune.search.front import FrontView
from edgetune.settings import Settings
from edgetune.storage import JobRepository, open_database

API_PREFIX = "/api/v1"
logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.db = open_database(settings.url)
        install_tokens(app.state.db, settings)
        app.state.auth = Authenticator(app.state.db, settings)
        app.state.front = FrontView(app.state.db)
        graphs = GraphReader(max_bytes=settings.predictor_max_graph_bytes,
                             timeout_s=settings.predictor_graph_timeout_s)
        app.state.predictors = PredictorCache(max_graph_bytes=settings.predictor_max_graph_bytes,
                                              reader=graphs)
        jobs_repo, front = JobRepository(app.state.db), app.state.front
        app.state.events = JobEventHub(
            lambda job_id: JobEventStream(job_id, jobs_repo, app.state.db, front),
            max_streams=settings.events_max_streams,
            max_per_token=settings.events_max_streams_per_token,
            min_interval_s=settings.events_min_interval_s,
            live_tokens=app.state.auth.live_token_ids if settings.auth else None,
        )
        app.state.ask_tell = AskTellStudies(
            JobRepository(app.state.db), heartbeat_s=max(1, round(settings.job_lease_s / 4))
        )
        stopping = threading.Event()
        threading.Thread(target=_reap_orphan_studies, name="orphan-studies", daemon=True,
                         args=(JobRepository(app.state.db), settings.orphan_study_grace_s,
                               stopping)).start()
        # What was imported and built at start lives as long as the process: frozen out of the
        # collector's reach, a full collection walks only what requests made. Unfrozen, one
        # 100-trial page in eight waited on a 95-157 ms collection of ~170k objects
        # (benchmarks/trials_page.py).
        gc.freeze()
        yield
        stopping.set()
        await app.state.events.close()
        graphs.close()
        app.state.db.dispose()

    app = FastAPI(
        title="edgetune",
        version=__version__,
        summary="Multi-objective search for models that ship to real hardware.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)

    # Inside the size cap: it reads a JSON body whole, so the cap must bound it first.
    app.add_middleware(RefuseInvalidText)
    # Uploaded models are larger than any JSON body: only their route takes more. A JobSpec
    # has a cap of its own, as every job's spec is read back by its workers and streams.
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, bound="EDGETUNE_MAX_BODY_BYTES",
        limits={
            ("POST", API_PREFIX + probes.UPLOAD_PATH):
                (settings.max_upload_bytes, "EDGETUNE_MAX_UPLOAD_BYTES"),
            ("POST", API_PREFIX + "/jobs"): (settings.max_spec_bytes, "EDGETUNE_MAX_SPEC_BYTES"),
        },
    )

    api = APIRouter(prefix=API_PREFIX)
    api.include_router(health.router)  # the one route without a token: for health checks
    for router in (jobs.router, ask_tell.router, artifacts.router, devices.router,
                   probes.router, tokens.router):
        api.include_router(router, responses=AUTH_RESPONSES)
    app.include_router(api)
    return app


class _Stopping(Exception):
    pass


def _reap_orphan_studies(jobs: JobRepository, grace_s: float, stopping: threading.Event) -> None:
    """Delete the studies a stopped server left without their job (see
    `JobRepository.reap_orphan_studies`), unless the server stops first."""

    def wait(seconds: float) -> None:
        if stopping.wait(seconds):
            raise _Stopping

    try:
        for name in jobs.reap_orphan_studies(grace_s=grace_s, sleep=wait):
            logger.warning("deleted study %r: its job was never stored", name)
    except _Stopping:
        pass
    except Exception as e:  # the database is down: the next start tries again
        logger.warning("could not look for orphan studies: %s", e)


#: What every route but /health may answer besides its own responses.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "No token, or an unknown or revoked one."},
    403: {"model": ErrorPublic, "description": "The token's scope does not allow this."},
    413: {"model": ErrorPublic, "description": "The request body is over the size cap."},
    429: {"model": ErrorPublic, "description": "Too many requests from this token; see "
                                               "Retry-After."},
}


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """Answers 413 for a body over `max_bytes`: at once from a declared Content-Length, or as
    soon as a chunked body passes the limit, before the rest is read. `limits` names the
    (method, path) pairs with a limit of their own, and the setting that sets it (`bound`
    names the general one), which the answer names."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, bound: str = "",
        limits: dict[tuple[str, str], tuple[int, str]] | None = None,
    ) -> None:
        self.app = app
        self.default = (max_bytes, bound)
        self.limits = dict(limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, bound = self.limits.get((scope["method"], scope["path"].rstrip("/")),
                                           self.default)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > max_bytes):
            await self._refuse(scope, receive, send, max_bytes, bound)
            return
        received = 0
        too_large = refused = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal refused
            if not too_large:
                await send(message)
            elif not refused:
                # FastAPI turns the reader's error into its own 400; answer 413 instead.
                refused = True
                await self._refuse(scope, receive, send, max_bytes, bound)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not refused:
                await self._refuse(scope, receive, send, max_bytes, bound)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, max_bytes: int, bound: str
    ) -> None:
        named = f" (the bound {bound})" if bound else ""
        response = JSONResponse(
            status_code=413, content={"detail": f"request body over {max_bytes} bytes{named}"}
        )
        await response(scope, receive, send)
