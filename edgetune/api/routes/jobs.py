"""`/jobs`: submit, list, read and cancel searches; their trials and their Pareto front."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from optuna.trial import FrozenTrial, TrialState

from edgetune.errors import InvalidSpecError, NotFoundError
from edgetune.schemas import (
    ErrorPublic,
    HypervolumePublic,
    JobProgress,
    JobPublic,
    JobsPublic,
    JobSummary,
    ParetoPublic,
    TrialPublic,
    TrialsPublic,
)
from edgetune.search import validate_job_spec
from edgetune.search.events import JobEventHub, StreamLimitReached
from edgetune.search.front import trial_metrics
from edgetune.spec import LOCAL_DEVICE, JobSpec
from edgetune.storage import Database, DeviceRepository, Job
from edgetune.storage.artifacts import artifact_path
from edgetune.storage.study_store import trial_of_study, trials_page
from edgetune.storage.trials import trial_state_counts

from ..deps import DatabaseDep, FrontDep, JobsDep, SettingsDep, UserDep

router = APIRouter(prefix="/jobs", tags=["jobs"])


_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic}}
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
Limit = Annotated[int, Query(ge=1, le=500)]


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=JobPublic,
    responses={422: {"model": ErrorPublic},
               409: {"model": ErrorPublic, "description": "The Idempotency-Key was used with "
                     "another spec, or the tenant has `max_active_jobs_per_tenant` queued or "
                     "running jobs."}},
)
def create_job(
    spec: JobSpec, jobs: JobsDep, db: DatabaseDep, settings: SettingsDep, caller: UserDep,
    idempotency_key: Annotated[str | None, Header(
        min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
        description="Repeating a submission with the same key returns the job the first one "
                    "made, instead of a second job (409 when the spec differs).")] = None,
) -> JobPublic:
    """Validate a JobSpec and queue it; a worker picks it up."""
    validate_job_spec(spec, devices=known_devices(db, spec, caller.tenant))
    job = jobs.create(spec, tenant=caller.tenant, idempotency_key=idempotency_key,
                      max_active=settings.max_active_jobs_per_tenant)
    return _public([job], db)[0]


@router.get("", response_model=JobsPublic, responses={422: {"model": ErrorPublic}})
def list_jobs(
    jobs: JobsDep,
    db: DatabaseDep,
    settings: SettingsDep,
    caller: UserDep,
    status: Annotated[
        str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")
    ] = None,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, description="At most `max_jobs_page` (100 by "
                                "default).")] = 50,
) -> JobsPublic:
    """Jobs, newest first, without their specs (`GET /jobs/{id}` has a job's spec)."""
    if limit > settings.max_jobs_page:
        raise RequestValidationError([{
            "loc": ("query", "limit"), "type": "less_than_equal",
            "msg": f"Input should be less than or equal to {settings.max_jobs_page} "
                   "(EDGETUNE_MAX_JOBS_PAGE)",
        }])
    rows, count = jobs.summaries(tenant=caller.tenant, status=status, offset=offset,
                                 limit=limit)
    states = trial_state_counts(db, [j.study_name for j in rows])
    return JobsPublic(count=count, data=[
        JobSummary(
            id=j.id, name=j.name, status=j.status,  # type: ignore[arg-type]
            study_name=j.study_name, created_at=j.created_at, started_at=j.started_at,
            finished_at=j.finished_at, error=j.error,
            progress=JobProgress.from_counts(j.n_trials, states.get(j.study_name, {})),
        ) for j in rows
    ])


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
def get_job(job_id: str, jobs: JobsDep, db: DatabaseDep, caller: UserDep) -> JobPublic:
    return _public([jobs.get(job_id, tenant=caller.tenant)], db)[0]


@router.post(
    "/{job_id}/cancel", response_model=JobPublic,
    responses={**_ERRORS, 409: {"model": ErrorPublic}},
)
def cancel_job(job_id: str, jobs: JobsDep, db: DatabaseDep, caller: UserDep) -> JobPublic:
    """Cancel a job: a queued one at once, a running one as soon as its worker sees it."""
    return _public([jobs.request_cancel(job_id, tenant=caller.tenant)], db)[0]


@router.get("/{job_id}/trials", response_model=TrialsPublic, responses=_ERRORS)
def list_trials(
    job_id: str,
    jobs: JobsDep,
    db: DatabaseDep,
    caller: UserDep,
    state: Annotated[str | None, Query(pattern="^(running|waiting|complete|pruned|fail)$")] = None,
    offset: Offset = 0,
    limit: Limit = 100,
) -> TrialsPublic:
    """The job's trials by number."""
    job = jobs.get(job_id, tenant=caller.tenant)
    try:
        page, count = trials_page(db.url, job.study_name, state=state, offset=offset,
                                  limit=limit)
    except KeyError as e:  # deleted outside edgetune (optuna-dashboard, `optuna delete-study`)
        raise NotFoundError(f"the study of job {job.id!r} no longer exists") from e
    spec = job.spec
    return TrialsPublic(data=[_trial_public(t, spec) for t in page], count=count)


@router.get("/{job_id}/trials/{number}", response_model=TrialPublic, responses=_ERRORS)
def get_trial(
    job_id: str, number: int, jobs: JobsDep, db: DatabaseDep, caller: UserDep
) -> TrialPublic:
    job = jobs.get(job_id, tenant=caller.tenant)
    return _trial_public(_trial(db, job, number), job.spec)


Objectives = Annotated[
    str | None,
    Query(max_length=1000, description="Comma-separated subset, e.g. accuracy,size_bytes."),
]
Reference = Annotated[
    str | None,
    Query(max_length=1000, description="Hypervolume reference point, one value per objective "
          "in order, comma-separated; derived from the data when absent."),
]


@router.get("/{job_id}/pareto", response_model=ParetoPublic, responses=_ERRORS)
def get_pareto(
    job_id: str,
    jobs: JobsDep,
    front: FrontDep,
    caller: UserDep,
    objectives: Objectives = None,
    reference: Reference = None,
    include_dominated: Annotated[
        bool, Query(description="Also return the dominated trials, with their rank.")
    ] = False,
    offset: Offset = 0,
    limit: Limit = 100,
) -> ParetoPublic:
    """Completed trials ranked (feasible first): rank, crowding, hypervolume share, knee."""
    job = jobs.get(job_id, tenant=caller.tenant)
    spec = job.spec
    try:
        return front.pareto(
            job.id, job.study_name, spec, objectives=_names(objectives),
            reference=_floats(reference), include_dominated=include_dominated,
            offset=offset, limit=limit,
        )
    except ValueError as e:
        raise InvalidSpecError("query", str(e)) from e


@router.get("/{job_id}/hypervolume", response_model=HypervolumePublic, responses=_ERRORS)
def get_hypervolume(
    job_id: str, jobs: JobsDep, front: FrontDep, caller: UserDep,
    objectives: Objectives = None, reference: Reference = None,
) -> HypervolumePublic:
    """How the feasible front's hypervolume grew, trial by trial, in completion order."""
    job = jobs.get(job_id, tenant=caller.tenant)
    spec = job.spec
    try:
        return front.hypervolume_history(job.id, job.study_name, spec,
                                         objectives=_names(objectives),
                                         reference=_floats(reference))
    except ValueError as e:
        raise InvalidSpecError("query", str(e)) from e


@router.get(
    "/{job_id}/trials/{number}/artifact",
    response_class=FileResponse,
    responses={**_ERRORS, 200: {"content": {"application/octet-stream": {}}}},
)
def get_artifact(
    job_id: str, number: int, jobs: JobsDep, db: DatabaseDep, settings: SettingsDep,
    caller: UserDep,
) -> FileResponse:
    """The trial's exported model (ONNX or TorchScript), named by its sha256."""
    job = jobs.get(job_id, tenant=caller.tenant)
    artifact = _trial(db, job, number).user_attrs.get("artifact") or {}
    try:
        # The file name comes from the hash the worker recorded, never from the request.
        path = artifact_path(settings.artifact_dir, str(artifact.get("sha256", "")),
                             str(artifact.get("format")))
    except ValueError as e:
        raise NotFoundError(f"trial {number} of job {job_id!r} has no artifact") from e
    if not path.is_file():
        raise NotFoundError(f"the artifact of trial {number} is no longer stored")
    return FileResponse(
        path, media_type="application/octet-stream",
        filename=f"{job.name}-trial{number}{path.suffix}",
        headers={"X-Artifact-Sha256": str(artifact["sha256"])},
    )



@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}},
               429: {"model": ErrorPublic, "description": "Too many event streams open: "
                     "this token's, or the server's; see Retry-After."}},
)
async def job_events(
    job_id: str, request: Request, jobs: JobsDep, caller: UserDep,
    interval_s: Annotated[float, Query(
        ge=0.1, le=30, description="How often to look for news; raised to the server's "
        "`events_min_interval_s` (0.5 s by default).")] = 0.5,
) -> Response:
    """Server-sent events: `progress`, `trial` (one per finished trial), `front` (when it
    changes) and `end` (the job's final status), after which the stream closes. Every stream
    of a job is served from one shared poll of the database; a token may hold
    `events_max_streams_per_token` streams open, the server `events_max_streams`."""
    job = await run_in_threadpool(functools.partial(jobs.get, job_id, tenant=caller.tenant))
    hub: JobEventHub = request.app.state.events
    try:
        subscription = hub.subscribe(job.id, caller.token_id, interval_s)
    except StreamLimitReached as e:
        return JSONResponse(status_code=429, content={"detail": str(e)},
                            headers={"Retry-After": str(max(1, math.ceil(e.retry_after_s)))})

    async def generate() -> AsyncIterator[str]:
        try:
            async for message in subscription.messages():
                yield message
        finally:
            hub.unsubscribe(subscription)

    return StreamingResponse(
        generate(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _names(text: str | None) -> list[str] | None:
    return [o.strip() for o in text.split(",") if o.strip()] if text else None


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as e:
        raise InvalidSpecError("reference", f"must be comma-separated numbers: {e}") from e
    if not all(math.isfinite(v) for v in values):
        raise InvalidSpecError("reference", "must be finite numbers")
    return values


# --- views ---------------------------------------------------------------------------------
def _public(rows: Sequence[Job], db: Database) -> list[JobPublic]:
    counts = trial_state_counts(db, [j.study_name for j in rows])
    out = []
    for job in rows:
        spec = job.spec
        progress = JobProgress.from_counts(spec.budget.n_trials,
                                           counts.get(job.study_name, {}))
        out.append(JobPublic(
            id=job.id, name=job.name, status=job.status,  # type: ignore[arg-type]
            study_name=job.study_name, created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at, error=job.error, spec=spec, progress=progress,
        ))
    return out


def known_devices(db: Database, spec: JobSpec, tenant: str) -> set[str]:
    """`local` and those of the spec's devices that `tenant` registered."""
    registered = set()
    for name in spec.devices:
        with contextlib.suppress(NotFoundError, ValueError):
            registered.add(DeviceRepository(db).get_by_name(name, tenant=tenant).name)
    return {LOCAL_DEVICE, *registered}


def _trial(db: Database, job: Job, number: int) -> FrozenTrial:
    try:
        return trial_of_study(db.url, job.study_name, number)
    except KeyError as e:  # the study deleted outside edgetune, or no such trial
        raise NotFoundError(f"job {job.id!r} has no trial {number}") from e


def _trial_public(t: FrozenTrial, spec: JobSpec) -> TrialPublic:
    values = (
        dict(zip(spec.metric_names, t.values, strict=True))
        if t.state == TrialState.COMPLETE and t.values is not None else None
    )
    duration = (
        (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start else None
    )
    return TrialPublic(
        number=t.number,
        state=t.state.name.lower(),  # type: ignore[arg-type]
        params=t.params | t.user_attrs.get("fixed_params", {}),
        values=values,
        metrics=trial_metrics(t.user_attrs),
        intermediate_values=dict(t.intermediate_values),
        started_at=_aware(t.datetime_start),
        finished_at=_aware(t.datetime_complete),
        duration_s=duration,
        error=t.user_attrs.get("error"),
        user_attrs=t.user_attrs,
    )


def _aware(moment: datetime | None) -> datetime | None:
    # Optuna hands back naive local times; the API speaks UTC everywhere.
    return None if moment is None else moment.astimezone(UTC)
